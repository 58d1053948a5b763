"""The domain core: readings, snapshots, commands, directives, economics and the machine
model catalogue. No I/O and no orchestration: drivers, policies, the controller, the
backtest and the emulator all import it, and it imports none of them
(.importlinter)."""
