"""Local operators over MQTT: the paho client and its publish loop (``client``), the store-and-forward outbox
(``outbox``), operator commands (``commands``) and value deadbands (``deadband``)."""
