"""Typed, validated HiFi-GAN configuration read from the original's flat JSON keys.

A user's existing ``config.json`` from github.com/jik876/hifi-gan loads as it is. The flat keys are split into
frozen sections (audio, generator, discriminator, loss, optimizer, training); each section checks its own values
and :func:`load_config` checks that they fit together. Every problem is a :class:`ConfigError` whose one-line
message names the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Mapping

from core.errors import UserError
from core.storage import BEAM_IO, Backend, read_bytes

# The resolved config written beside the checkpoints and beside the shards (original flat keys).
CONFIG_NAME = "config.json"

# NOTE: the original clamps magnitudes at 1e-5 before the natural log; padding a log-mel with anything else
# makes the vocoder buzz (original issue #50), so the floor is part of the feature contract.
LOG_FLOOR = 1e-5
LOG_FLOOR_VALUE = math.log(LOG_FLOOR)
# Reflect padding of (n_fft - hop_size) / 2 on each side and no centring: the original's framing.
PADDING_CONVENTION = "reflect_(n_fft-hop_size)/2_no_center"
CHANNEL_DIVISORS = (1, 2, 4, 8)


class ConfigError(UserError):
    """A config problem; the message is one line naming the offending key."""


def _fail(key: str, why: str) -> None:
    raise ConfigError(f"config key '{key}': {why}")


def _int(raw: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"must be an integer, got {value!r}")
    if value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")
    return value


def _float(raw: Mapping[str, Any], key: str, minimum: float | None = 0.0, allow_none: bool = False):
    value = raw[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, f"must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")
    return float(value)


def _int_list(raw: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = raw[key]
    if not isinstance(value, (list, tuple)) or not value:
        _fail(key, f"must be a non-empty list of integers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            _fail(key, f"must hold positive integers, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Signal and mel parameters: everything the features depend on."""

    sampling_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float | None
    fmax_for_loss: float | None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "AudioConfig":
        cfg = cls(
            sampling_rate=_int(raw, "sampling_rate"),
            n_fft=_int(raw, "n_fft", 2),
            hop_size=_int(raw, "hop_size"),
            win_size=_int(raw, "win_size", 2),
            num_mels=_int(raw, "num_mels"),
            fmin=_float(raw, "fmin"),
            fmax=_float(raw, "fmax", allow_none=True),
            fmax_for_loss=_float(raw, "fmax_for_loss", allow_none=True),
        )
        nyquist = cfg.sampling_rate / 2
        if cfg.win_size > cfg.n_fft:
            _fail("win_size", f"{cfg.win_size} exceeds n_fft {cfg.n_fft}")
        if cfg.hop_size > cfg.n_fft:
            _fail("hop_size", f"{cfg.hop_size} exceeds n_fft {cfg.n_fft}")
        for key in ("fmax", "fmax_for_loss"):
            value = getattr(cfg, key)
            if value is not None and value > nyquist:
                _fail(key, f"{value:g} Hz is above Nyquist ({nyquist:g} Hz for sampling_rate {cfg.sampling_rate})")
            if value is not None and value <= cfg.fmin:
                _fail(key, f"{value:g} Hz must be above fmin ({cfg.fmin:g} Hz)")
        if cfg.fmin >= nyquist:
            _fail("fmin", f"{cfg.fmin:g} Hz is not below Nyquist ({nyquist:g} Hz)")
        return cfg

    @property
    def padding(self) -> int:
        """Reflect padding on each side of the signal before the (uncentred) STFT."""
        return (self.n_fft - self.hop_size) // 2

    def num_frames(self, num_samples: int) -> int:
        """Frames the original's framing gives for a signal of ``num_samples`` samples."""
        return max(0, 1 + (num_samples + 2 * self.padding - self.n_fft) // self.hop_size)

    def fingerprint(self) -> dict[str, Any]:
        """Everything a stored feature depends on; shards and checkpoints must agree on it."""
        return {
            "sampling_rate": self.sampling_rate,
            "n_fft": self.n_fft,
            "hop_size": self.hop_size,
            "win_size": self.win_size,
            "num_mels": self.num_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "fmax_for_loss": self.fmax_for_loss,
            "padding": PADDING_CONVENTION,
            "log_floor": LOG_FLOOR,
        }

    def fingerprint_hash(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """The generator's hyperparameters (V1/V2/V3 differ only here)."""

    num_mels: int
    resblock: str
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "GeneratorConfig":
        resblock = str(raw["resblock"])
        if resblock not in ("1", "2"):
            _fail("resblock", f"must be \"1\" or \"2\", got {raw['resblock']!r}")
        dilations = raw["resblock_dilation_sizes"]
        if not isinstance(dilations, (list, tuple)) or not dilations:
            _fail("resblock_dilation_sizes", f"must be a non-empty list of lists, got {dilations!r}")
        dilations = tuple(_int_list({"resblock_dilation_sizes": d}, "resblock_dilation_sizes") for d in dilations)
        cfg = cls(
            num_mels=_int(raw, "num_mels"),
            resblock=resblock,
            upsample_rates=_int_list(raw, "upsample_rates"),
            upsample_kernel_sizes=_int_list(raw, "upsample_kernel_sizes"),
            upsample_initial_channel=_int(raw, "upsample_initial_channel"),
            resblock_kernel_sizes=_int_list(raw, "resblock_kernel_sizes"),
            resblock_dilation_sizes=dilations,
        )
        if len(cfg.upsample_kernel_sizes) != len(cfg.upsample_rates):
            _fail("upsample_kernel_sizes", f"has {len(cfg.upsample_kernel_sizes)} entries but upsample_rates "
                  f"has {len(cfg.upsample_rates)}")
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            if kernel < rate:
                _fail("upsample_kernel_sizes", f"kernel {kernel} is smaller than its upsample rate {rate}")
        if len(cfg.resblock_dilation_sizes) != len(cfg.resblock_kernel_sizes):
            _fail("resblock_dilation_sizes", f"has {len(cfg.resblock_dilation_sizes)} entries but "
                  f"resblock_kernel_sizes has {len(cfg.resblock_kernel_sizes)}")
        if cfg.resblock == "1" and any(len(d) != 3 for d in cfg.resblock_dilation_sizes):
            _fail("resblock_dilation_sizes", "resblock \"1\" takes exactly 3 dilations per kernel")
        if cfg.upsample_initial_channel % (2 ** len(cfg.upsample_rates)):
            _fail("upsample_initial_channel", f"{cfg.upsample_initial_channel} is not divisible by "
                  f"2**{len(cfg.upsample_rates)} (one halving per upsampling layer)")
        return cfg

    @property
    def upsample_factor(self) -> int:
        return math.prod(self.upsample_rates)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-period and multi-scale discriminators (not configurable in the original; optional keys here)."""

    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    # Divides every discriminator layer's channels (1: the original's width; 2, 4, 8: small CPU demo models).
    channel_divisor: int = 1

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "DiscriminatorConfig":
        values = {}
        if "mpd_periods" in raw:
            values["mpd_periods"] = _int_list(raw, "mpd_periods")
        if "discriminator_channel_divisor" in raw:
            divisor = _int(raw, "discriminator_channel_divisor")
            if divisor not in CHANNEL_DIVISORS:
                raise ConfigError(f"'discriminator_channel_divisor': must be one of {CHANNEL_DIVISORS} (the "
                                  f"grouped convolutions need whole channels per group), got {divisor}")
            values["channel_divisor"] = divisor
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss weights. NOTE: the original hard-codes mel x45 and feature matching x2; these are those defaults."""

    lambda_mel: float = 45.0
    lambda_feature_matching: float = 2.0
    lambda_adversarial: float = 1.0

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "LossConfig":
        values = {f.name: _float(raw, f.name) for f in dataclasses.fields(cls) if f.name in raw}
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW as the original's (torch's default weight decay 0.01) with per-epoch exponential decay."""

    learning_rate: float
    adam_b1: float
    adam_b2: float
    lr_decay: float
    weight_decay: float = 0.01

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "OptimizerConfig":
        cfg = cls(
            learning_rate=_float(raw, "learning_rate"),
            adam_b1=_float(raw, "adam_b1"),
            adam_b2=_float(raw, "adam_b2"),
            lr_decay=_float(raw, "lr_decay"),
            weight_decay=_float(raw, "weight_decay") if "weight_decay" in raw else 0.01,
        )
        if cfg.learning_rate <= 0:
            _fail("learning_rate", f"must be positive, got {cfg.learning_rate}")
        for key in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(cfg, key) < 1:
                _fail(key, f"must be in [0, 1), got {getattr(cfg, key)}")
        if not 0 < cfg.lr_decay <= 1:
            _fail("lr_decay", f"must be in (0, 1], got {cfg.lr_decay}")
        return cfg


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Batching and cropping."""

    batch_size: int
    segment_size: int
    seed: int

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> "TrainingConfig":
        return cls(
            batch_size=_int(raw, "batch_size"),
            segment_size=_int(raw, "segment_size"),
            seed=_int(raw, "seed", 0),
        )


# Keys of the original's configs that this toolkit accepts but does not use: torch's multi-GPU plumbing, and
# NOTE: num_freq, which the original never reads (its configs say 1025 for n_fft 1024).
IGNORED_KEYS = frozenset({"num_gpus", "num_workers", "dist_config", "num_freq"})
REQUIRED_KEYS = frozenset({
    "resblock", "batch_size", "learning_rate", "adam_b1", "adam_b2", "lr_decay", "seed", "upsample_rates",
    "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes", "resblock_dilation_sizes",
    "segment_size", "num_mels", "n_fft", "hop_size", "win_size", "sampling_rate", "fmin", "fmax", "fmax_for_loss",
})
OPTIONAL_KEYS = frozenset({"weight_decay", "mpd_periods", "discriminator_channel_divisor"}
                          | {f.name for f in dataclasses.fields(LossConfig)})


@dataclasses.dataclass(frozen=True)
class HiFiGANConfig:
    """The whole configuration, one frozen section per role."""

    audio: AudioConfig
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    loss: LossConfig
    optimizer: OptimizerConfig
    training: TrainingConfig
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @property
    def frames_per_segment(self) -> int:
        return self.training.segment_size // self.audio.hop_size

    def to_json(self) -> str:
        """The resolved config in the original's flat keys (written beside shards and checkpoints)."""
        return json.dumps(dict(self.raw), indent=2)


def config_from_dict(raw: Mapping[str, Any]) -> HiFiGANConfig:
    """Validate a flat, original-style config mapping."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - REQUIRED_KEYS - OPTIONAL_KEYS - IGNORED_KEYS)
    if unknown:
        _fail(unknown[0], "unknown key (known keys are the original hifi-gan config's)")
    missing = sorted(REQUIRED_KEYS - set(raw))
    if missing:
        _fail(missing[0], "missing")
    audio = AudioConfig.from_raw(raw)
    generator = GeneratorConfig.from_raw(raw)
    training = TrainingConfig.from_raw(raw)
    if generator.upsample_factor != audio.hop_size:
        _fail("upsample_rates", f"product {generator.upsample_factor} must equal hop_size {audio.hop_size}")
    if training.segment_size % audio.hop_size:
        _fail("segment_size", f"{training.segment_size} is not a multiple of hop_size {audio.hop_size}")
    return HiFiGANConfig(
        audio=audio,
        generator=generator,
        discriminator=DiscriminatorConfig.from_raw(raw),
        loss=LossConfig.from_raw(raw),
        optimizer=OptimizerConfig.from_raw(raw),
        training=training,
        raw=dict(raw),
    )


def load_config(path: str, io: Backend = BEAM_IO) -> HiFiGANConfig:
    """Read and validate a JSON config file: a local path, or a URI read with ``io`` (core/storage.py)."""
    try:
        text = read_bytes(path, io=io).decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (at byte {e.start}), so not a JSON config") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
