"""Redis Streams side of the service: the wire codec and the consumer loop behind `rlv3_subscribe`."""
