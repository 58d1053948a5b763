"""Emulated site power equipment: switched rack PDUs (SNMP) and a site meter (Modbus TCP).

They exist so that curtaild's hard power-down tier and its metered power chain can be tested
against real protocols: a PDU outlet switched off over SNMP really cuts the mains power of the
emulated miners plugged into it (``EmulatedMiner.cut_power``, the same call as the control
API's ``POST /miners/{ip}/power``), and the meter reads the physics of every machine.

- :mod:`emulator.pdu.model`: the PDUs' outlets and what is plugged into them;
- :mod:`emulator.pdu.mibs`: the real MIB objects each vendor serves (APC PowerNet-MIB,
  Raritan PDU2-MIB), as OID -> value functions over the model;
- :mod:`emulator.pdu.agent`: one pysnmp engine answering every PDU's address (v2c and v3);
- :mod:`emulator.pdu.plan`: ``[[pdu]]``/``[meter]`` in the fleet TOML and ``--count`` fleets;
- :mod:`emulator.meter`: the Modbus TCP meter (SunSpec model 213).
"""
