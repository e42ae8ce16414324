"""The Beam-free core both sides import: config, audio, mel, the record contract, manifest, filelists, mel files
and storage IO. Nothing here imports Beam or model/."""
