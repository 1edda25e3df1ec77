"""Generic ClientApp runtime: local training for whichever algorithm a message names."""
