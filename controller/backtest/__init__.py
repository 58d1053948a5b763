"""``curtaild backtest``: replay a price series against a simulated fleet under the configured
policy and guards, and compare with always-on and a perfect-foresight optimum (docs/backtest.md).

``prices`` parses the CSV, ``machines`` simulates the fleet (the emulator's physics),
``journal`` stands in for the SQLite journal, ``sim`` is the pure core, ``report`` renders the
table, the JSON and the plot.
"""
