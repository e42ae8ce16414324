"""The Beam-free core both sides import: config, audio, mel, the record contract, manifest, filelists, mel files
and storage IO. Nothing here imports Beam, TensorFlow or model/ when imported; a URI is read through the backend
its caller names (core/storage.py: Beam's FileSystems for the job, tf.io.gfile for the model side)."""
