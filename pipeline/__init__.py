"""The Beam preprocessing job: clip preparation, TFRecord IO, the transforms and the runner (see core/ for the
Beam-free parts both sides share)."""
