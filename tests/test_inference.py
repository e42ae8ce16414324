"""Inference: receptive field, batching and chunking equal to one pass, run_inference.py on WAVs and on mels in
every layout, bad inputs reported while the rest are written. The generator is the original's tiny fixture
generator converted from tests/fixtures/ckpt_g_zip (hop 16, 8 kHz, 80 mels)."""

import errno
import logging
import os

import numpy as np
import pytest
import soundfile as sf

import run_inference
from conftest import chirp_with_noise, write_audio
from model.checkpoint import restore_generator
from model.inference import OUTPUT_SOFTWARE, Vocoder, receptive_field_frames
from core.audio import load_audio, to_int16, written_by
from core.mel import MelExtractor
from core.melfile import mel_warning

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Same float32 computation in a different batch / length: oneDNN may round differently, ~1e-7 of full scale.
SAME_ATOL = 1e-6


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return restore_generator(tiny_checkpoint)


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURES, "ckpt_parity.npz")) as data:
        return dict(data)


def _random_mels(lengths, num_mels, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-11.0, 1.0, (n, num_mels)).astype(np.float32) for n in lengths]


def test_receptive_field_bounds_the_influence_of_a_frame(model):
    generator, cfg = model
    vocoder = Vocoder(generator, cfg)
    reach, hop = receptive_field_frames(cfg.generator), cfg.audio.hop_size
    (mel,) = _random_mels([160], cfg.audio.num_mels)
    changed = mel.copy()
    changed[80] += 3.0
    diff = np.abs(vocoder.generate(changed[None]).numpy()[0] - vocoder.generate(mel[None]).numpy()[0])
    touched = np.flatnonzero(diff > 0)
    assert touched.min() >= (80 - reach) * hop and touched.max() < (80 + reach + 1) * hop
    assert touched.max() - touched.min() > reach * hop  # the bound is not loose by more than half


def test_batched_equals_one_by_one(model):
    generator, cfg = model
    mels = _random_mels([37, 5, 120, 64, 301, 64], cfg.audio.num_mels, seed=1)
    vocoder = Vocoder(generator, cfg, max_batch_frames=700, chunk_frames=10_000)
    windows = [w for i, mel in enumerate(mels) for w in vocoder._windows(i, len(mel))]
    assert len(vocoder._batches(windows, same_length=False)) < len(mels)  # some batches hold several, padded
    batched = vocoder(mels)
    for mel, audio in zip(mels, batched):
        alone = vocoder.generate(mel[None]).numpy()[0]
        assert audio.shape == (mel.shape[0] * cfg.audio.hop_size,)
        np.testing.assert_allclose(audio, alone, rtol=0, atol=SAME_ATOL)
    assert vocoder.generate.experimental_get_tracing_count() == 1  # one trace for every batch size and length


def test_chunked_long_input_equals_one_pass(model):
    generator, cfg = model
    (mel,) = _random_mels([700], cfg.audio.num_mels, seed=2)
    one_pass = Vocoder(generator, cfg).generate(mel[None]).numpy()[0]
    chunked = Vocoder(generator, cfg, chunk_frames=64)([mel])[0]
    np.testing.assert_allclose(chunked, one_pass, rtol=0, atol=SAME_ATOL)
    assert np.abs(to_int16(chunked).astype(int) - to_int16(one_pass).astype(int)).max() <= 1
    # Without context the chunk seams show: the context is what makes it exact.
    seams = Vocoder(generator, cfg, chunk_frames=64, context_frames=0)([mel])[0]
    assert np.abs(seams - one_pass).max() > 1e-3


def test_to_int16_clips_instead_of_wrapping():
    np.testing.assert_array_equal(to_int16(np.array([1.0, -1.0, 0.5, -0.49999])), [32767, -32768, 16384, -16383])


def test_copy_synthesis_of_wavs_with_bad_files_reported(tiny_checkpoint, model, tmp_path, caplog):
    generator, cfg = model
    sr = cfg.audio.sampling_rate
    wavs = tmp_path / "wavs"
    clips = {"short": chirp_with_noise(0.2, sr, seed=1), "long": chirp_with_noise(0.45, sr, seed=2)}
    for name, audio in clips.items():
        write_audio(wavs / f"{name}.wav", audio, sr)
    write_audio(wavs / "resampled.flac", chirp_with_noise(0.3, 16000, seed=3), 16000, subtype="PCM_16")
    write_audio(wavs / "silent.wav", np.zeros(2000, np.float32), sr)
    (wavs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = run_inference.main(["--checkpoint", tiny_checkpoint, "--input_wavs_dir", str(wavs),
                                   "--output_dir", str(out)])
    assert code == 1
    assert sorted(os.listdir(out)) == ["long_generated.wav", "resampled_generated.wav", "short_generated.wav"]
    errors = {r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.ERROR}
    assert errors == {str(wavs / "silent.wav"), str(wavs / "broken.wav")}
    assert any("silent" in r.getMessage() for r in caplog.records)
    extractor = MelExtractor(cfg.audio)
    for name in ("short", "long"):
        written, rate = sf.read(out / f"{name}_generated.wav", dtype="int16")
        info = sf.info(str(out / f"{name}_generated.wav"))
        assert rate == sr and info.subtype == "PCM_16"
        with open(wavs / f"{name}.wav", "rb") as f:
            mel, _ = extractor(load_audio(f.read(), sr, normalise=True))
        assert written.shape == (mel.shape[0] * cfg.audio.hop_size,)
        want = to_int16(generator(mel[None]).numpy()[0, :, 0])
        assert np.abs(written.astype(int) - want.astype(int)).max() <= 1


def test_mels_in_every_layout_match_the_original(tiny_checkpoint, model, expected, tmp_path, caplog):
    _, cfg = model
    mel = expected["generator/mel"]  # the original's layout [num_mels, frames]
    mels = tmp_path / "mels"
    mels.mkdir()
    np.save(mels / "a_orig.npy", mel)
    np.save(mels / "b_batch.npy", mel[None])
    np.save(mels / "c_frames_first.npy", mel.T)
    np.save(mels / "d_log10.npy", mel / np.log(10.0))  # a log10 mel: vocoded, with a warning
    np.save(mels / "e_wrong_count.npy", mel[:-1])
    np.save(mels / "f_empty.npy", mel[:, :0])
    np.save(mels / "g_nan.npy", np.where(np.arange(mel.shape[1]) == 3, np.nan, mel))
    (mels / "h_corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    with open(mels / "i_npz.npy", "wb") as f:  # np.savez's archive under a .npy name
        np.savez(f, mel=mel)
    np.save(mels / "j_pickled.npy", np.array([{"mel": 1}], dtype=object), allow_pickle=True)
    (mels / "k_dir.npy").mkdir()
    (mels / "l_random.npy").write_bytes(np.random.default_rng(0).bytes(64))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(mels),
                                   "--output_dir", str(out)])
    assert code == 1
    stems = ["a_orig", "b_batch", "c_frames_first", "d_log10"]
    assert sorted(os.listdir(out)) == [f"{s}_generated.wav" for s in stems]
    failed = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    bad = ("e_wrong_count", "f_empty", "g_nan", "h_corrupt", "i_npz", "j_pickled", "k_dir", "l_random")
    assert sorted(failed) == [str(mels / f"{s}.npy") for s in bad]
    assert "num_mels = 80" in failed[str(mels / "e_wrong_count.npy")]
    assert failed[str(mels / "i_npz.npy")].endswith("an .npz archive, not a .npy array")
    assert failed[str(mels / "j_pickled.npy")].endswith("(an object array; Python objects are not loaded)")
    assert failed[str(mels / "l_random.npy")].endswith("(no .npy header; pickled data is not loaded)")
    assert failed[str(mels / "k_dir.npy")].endswith("is a directory")
    assert "NaN" in failed[str(mels / "g_nan.npy")] and "empty" in failed[str(mels / "f_empty.npy")]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "model.inference"]
    assert len(warned) == 1 and "d_log10.npy" in warned[0]
    reference = expected["generator/audio_int16"].astype(int)
    for stem in stems[:3]:
        audio, rate = sf.read(out / f"{stem}_generated.wav", dtype="int16")
        assert rate == cfg.audio.sampling_rate
        assert np.abs(audio.astype(int) - reference).max() <= 1


def test_mel_statistics_warning():
    rng = np.random.default_rng(0)
    natural = np.maximum(rng.normal(-6.0, 1.5, (200, 80)), np.log(1e-5))
    assert mel_warning(natural) is None
    assert "max" in mel_warning(rng.uniform(-4, 4, (200, 80)))  # normalised to [-4, 4]
    assert "mean" in mel_warning(rng.uniform(0, 1, (200, 80)))  # normalised to [0, 1]
    assert mel_warning(natural / np.log(10.0)) is not None  # log10
    assert "below log(1e-5)" in mel_warning(natural - 20.0)


def test_filelist_selects_inputs_and_reports_missing_ones(tiny_checkpoint, expected, tmp_path, caplog):
    mels = tmp_path / "mels"
    mels.mkdir()
    for stem in ("LJ001-0001", "LJ001-0002"):
        np.save(mels / f"{stem}.npy", expected["generator/mel"])
    filelist = tmp_path / "val.txt"
    np.save(mels / "spk.v2_0001.npy", expected["generator/mel"])
    # A dotted id is a stem (".v2_0001" is no extension); an audio path names its stem's mel.
    # UTF-8 with a byte-order mark and CRLF; a latin-1 transcript does no harm; a line without a path, or with one
    # that is not UTF-8, fails alone.
    filelist.write_bytes(b"\xef\xbb\xbfLJ001-0002|some text|some text\r\nLJ009-0009|missing|missing\r\n"
                         b"spk.v2_0001|dotted caf\xe9\r\nwavs/LJ001-0001.wav|a path\r\n|no path\r\nLJ\xff|bad path\r\n")
    with caplog.at_level(logging.ERROR):
        code = run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(mels), "--input_filelist",
                                   str(filelist), "--output_dir", str(tmp_path / "out")])
    assert code == 1
    assert sorted(os.listdir(tmp_path / "out")) == \
        ["LJ001-0001_generated.wav", "LJ001-0002_generated.wav", "spk.v2_0001_generated.wav"]
    assert [r.getMessage() for r in caplog.records if r.name == "model.inference"] == \
        [f"{filelist}:5: line has no path", f"{filelist}:6: path is not valid UTF-8",
         f"{mels / 'LJ009-0009.npy'}: not found"]


def test_inputs_with_one_output_name_and_bad_options(tiny_checkpoint, tmp_path, caplog, capsys):
    """a.flac and a.ogg would both write a_generated.wav: the second is reported, not silently overwritten; a
    chunk or batch size below one frame is refused in one line."""
    wavs = tmp_path / "wavs"
    for name, fmt in (("a.flac", "FLAC"), ("a.ogg", "OGG"), ("b.mp3", "MP3")):
        write_audio(wavs / name, chirp_with_noise(0.3, 8000, seed=len(name)), 8000, format=fmt,
                    subtype={"FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt])
    with caplog.at_level(logging.ERROR):
        code = run_inference.main(["--checkpoint", tiny_checkpoint, "--input_wavs_dir", str(wavs),
                                   "--output_dir", str(tmp_path / "out")])
    assert code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a_generated.wav", "b_generated.wav"]
    assert [r.getMessage() for r in caplog.records if r.name == "model.inference"] == \
        [f"{wavs / 'a.ogg'}: same output a_generated.wav as {wavs / 'a.flac'}; not vocoded"]
    for flag in ("--chunk_frames", "--max_batch_frames"):
        capsys.readouterr()
        assert run_inference.main(["--checkpoint", tiny_checkpoint, "--input_wavs_dir", str(wavs), flag, "0",
                                   "--output_dir", str(tmp_path / "out2")]) == 2
        assert capsys.readouterr().err.strip() == f"error: {flag[2:]} must be >= 1, got 0"


def test_tflite_backend_equals_tensorflow(model):
    generator, cfg = model
    mels = _random_mels([37, 200, 64], cfg.audio.num_mels, seed=3)
    tf_out = Vocoder(generator, cfg, max_batch_frames=300, chunk_frames=64)(mels)
    tflite_out = Vocoder(generator, cfg, max_batch_frames=300, chunk_frames=64, backend="tflite")(mels)
    for a, b in zip(tflite_out, tf_out):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # float32 in both; XNNPACK rounds differently


def test_never_overwrites_a_user_file_nor_vocodes_its_own_outputs(tiny_checkpoint, tmp_path, caplog):
    """--output_dir = --input_wavs_dir holding a user's b_generated.wav: b.wav's output is refused alone (it would
    overwrite an input), the others are written, tagged. A rerun rewrites its own outputs and does not vocode them
    again; a user's *_generated.wav is an input (told apart by the tag, not the name)."""
    wavs = tmp_path / "wavs"
    for seed, name in enumerate(("a", "b", "b_generated")):
        write_audio(wavs / f"{name}.wav", chirp_with_noise(0.2, 8000, seed=seed), 8000)
    users = (wavs / "b_generated.wav").read_bytes()
    argv = ["--checkpoint", tiny_checkpoint, "--input_wavs_dir", str(wavs), "--output_dir", str(wavs)]
    for _ in range(2):  # the first run, then a rerun
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert run_inference.main(argv) == 1
        assert [r.getMessage() for r in caplog.records if r.name == "model.inference"] == \
            [f"{wavs / 'b.wav'}: its output {wavs / 'b_generated.wav'} is an input; not overwritten, not vocoded"]
        assert sorted(os.listdir(wavs)) == ["a.wav", "a_generated.wav", "b.wav", "b_generated.wav",
                                            "b_generated_generated.wav"]
        assert (wavs / "b_generated.wav").read_bytes() == users
        assert written_by(str(wavs / "a_generated.wav")).startswith(OUTPUT_SOFTWARE)
        assert written_by(str(wavs / "b_generated.wav")) == ""


def test_refuses_an_existing_output_it_did_not_write(tiny_checkpoint, expected, tmp_path, caplog):
    """An output directory holding another tool's a_generated.wav (e.g. the original's): a's output is refused
    alone, the file kept; the same file written by this tool is replaced."""
    mels, out = tmp_path / "mels", tmp_path / "out"
    mels.mkdir()
    for stem in ("a", "b"):
        np.save(mels / f"{stem}.npy", expected["generator/mel"])
    write_audio(out / "a_generated.wav", chirp_with_noise(0.2, 8000), 8000)
    foreign = (out / "a_generated.wav").read_bytes()
    argv = ["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(mels), "--output_dir", str(out)]
    with caplog.at_level(logging.ERROR):
        assert run_inference.main(argv) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "model.inference"] == \
        [f"{mels / 'a.npy'}: its output {out / 'a_generated.wav'} exists and was not written by run_inference.py; "
         f"not overwritten, not vocoded"]
    assert (out / "a_generated.wav").read_bytes() == foreign
    assert sorted(os.listdir(out)) == ["a_generated.wav", "b_generated.wav"]
    os.remove(out / "a_generated.wav")
    assert run_inference.main(argv) == 0  # b_generated.wav (its own) is replaced
    assert sorted(os.listdir(out)) == ["a_generated.wav", "b_generated.wav"]


def test_a_full_disk_stops_in_one_line_and_leaves_no_partial_output(tiny_checkpoint, expected, tmp_path, capsys,
                                                                     monkeypatch):
    """ENOSPC while an output is written: exit status 1, one line naming the output, no truncated WAV or
    staged file left."""
    import model.inference

    def full_disk(path, audio, sampling_rate, software=None):
        with open(path, "wb") as f:
            f.write(b"RIFF\x00\x00")  # a truncated header, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", path)

    mels, out = tmp_path / "mels", tmp_path / "out"
    mels.mkdir()
    np.save(mels / "a.npy", expected["generator/mel"])
    monkeypatch.setattr(model.inference, "write_wav", full_disk)
    capsys.readouterr()
    assert run_inference.main(["--checkpoint", tiny_checkpoint, "--input_mels_dir", str(mels),
                               "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error")] == \
        [f"error: {out / 'a_generated.wav'}: cannot write to this output file (No space left on device)"]
    assert os.listdir(out) == []
