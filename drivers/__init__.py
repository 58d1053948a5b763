"""Adapters to the outside world (miners via pyasic, hash price, tariff). No decisions here."""
