"""Edge bridge: OPC UA, MQTT/Sparkplug B and Modbus to JetStream through a disk buffer."""
