"""Regenerates the demo corpus: short espeak-ng renderings of LJSpeech sentences (needs espeak-ng on PATH).

Each clip renders the longest word-boundary prefix (up to --max_chars characters) of one line of the original's
filelists/training.txt (the first --num_train lines) or validation.txt (the first --num_val lines) and is saved
as demo/wavs/<LJ id>.wav (16-bit PCM at 22050 Hz, espeak-ng's own format). The rendered fragment is the
filelist's text, so filelists/demo_train.txt and demo_val.txt keep the original's ``id|text|text`` form.

    python demo/make_demo_corpus.py
"""

import argparse
import os
import subprocess
import tempfile

import soundfile as sf

SAMPLING_RATE = 22050


def fragment(text: str, max_chars: int) -> str:
    """The longest prefix of whole words of ``text`` within ``max_chars``, without trailing punctuation."""
    out = ""
    for word in text.split():
        if len(out) + len(word) + 1 > max_chars and out:
            break
        out = f"{out} {word}".strip()
    return out.rstrip(",;:.")


def render(text: str):
    """espeak-ng's rendering of ``text``: int16 samples at 22050 Hz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-w", tmp.name, text], check=True)
        audio, sampling_rate = sf.read(tmp.name, dtype="int16")
    if sampling_rate != SAMPLING_RATE:
        raise RuntimeError(f"espeak-ng wrote {sampling_rate} Hz, expected {SAMPLING_RATE}")
    return audio


def render_short(text: str, max_seconds: float):
    """Renders ``text``, dropping its last words while the speech is longer than ``max_seconds`` (numbers are
    spoken in full)."""
    audio = render(text)
    while audio.size > max_seconds * SAMPLING_RATE and " " in text:
        text = text.rsplit(" ", 1)[0].rstrip(",;:.")
        audio = render(text)
    return text, audio


def make_split(source: str, count: int, max_chars: int, max_seconds: float, wav_dir: str, filelist: str) -> None:
    with open(source, encoding="utf-8") as f:
        lines = [line.split("|") for line in f.read().splitlines() if line.strip()][:count]
    with open(filelist, "w", encoding="utf-8") as out:
        for clip_id, text, *_ in lines:
            text, audio = render_short(fragment(text, max_chars), max_seconds)
            sf.write(os.path.join(wav_dir, f"{clip_id}.wav"), audio, SAMPLING_RATE, subtype="PCM_16")
            out.write(f"{clip_id}|{text}|{text}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filelists", default="filelists", help="directory of the original's training.txt and "
                        "validation.txt; the demo filelists are written there too")
    parser.add_argument("--wav_dir", default="demo/wavs", help="where the clips go")
    parser.add_argument("--num_train", type=int, default=30, help="training clips")
    parser.add_argument("--num_val", type=int, default=6, help="validation clips")
    parser.add_argument("--max_chars", type=int, default=28, help="longest text rendered (about 1-3 s of speech)")
    parser.add_argument("--max_seconds", type=float, default=3.0, help="longest clip")
    args = parser.parse_args()
    os.makedirs(args.wav_dir, exist_ok=True)
    for source, count, name in (("training.txt", args.num_train, "demo_train.txt"),
                                ("validation.txt", args.num_val, "demo_val.txt")):
        make_split(os.path.join(args.filelists, source), count, args.max_chars, args.max_seconds, args.wav_dir,
                   os.path.join(args.filelists, name))


if __name__ == "__main__":
    main()
