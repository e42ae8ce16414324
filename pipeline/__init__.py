"""Preprocessing: config, audio decoding, mel features, the record schema and the Beam job."""
