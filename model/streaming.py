"""Streaming vocoding: mel frames go in as they arrive (chunks of any size, one frame included) and the audio
comes out as soon as it is determined, equal to one pass of the generator over the whole utterance.

Each layer carries its own left context instead of re-running a window of mel frames:

- a stride-1 convolution (kernel k, dilation d, torch's zero padding p = d (k - 1) / 2 per side) keeps its last
  (k - 1) d inputs and runs VALID over [those; the new inputs]. Its outputs lag its inputs by r = d (k - 1) - p
  samples; the first r outputs of an utterance fall before its start (they stand for the left zero padding) and
  are dropped, and at the end of the utterance it is fed its own r zeros of right padding;
- a transposed convolution (rate u, kernel K, cropped by P = (K - u) // 2 on the left) runs in polyphase form:
  one VALID convolution of ceil(K / u) taps from its inputs to u * out channels, i.e. u output samples per input
  (the same products as the overlap-add, kept as input context instead of an output tail). It drops the first P
  samples (the crop) and at the end is fed the zeros that complete its last P samples;
- a residual add, and the mean over a stage's parallel blocks, delay the faster branch by the difference of the
  two branches' lags, so that both sides hold the same samples.

State: one flat float32 vector of fixed size (``state_size``): first one counter per layer that drops leading
outputs or delays a branch (samples seen, saturating at the count that matters, so float32 holds them exactly),
then every cache [length, channels] flattened, in the order the layers were built. The initial state is zeros.

Latency: after n frames the stream has given max(0, n * hop_size - latency_samples) samples, where

    latency_samples = ((3 u_1 + P_1 + B_1) u_2 + P_2 + B_2) ... u_N + P_N + B_N + 3

(3: the right reach of conv_pre and of conv_post; B_i: the largest sum of r over a resblock of stage i). So a
frame's audio is complete once ``latency_frames`` = ceil(latency_samples / hop_size) more frames have arrived:
V1 13 frames (3258 samples), V2 13 (3258), V3 11 (2582). That is exactly the one-pass generator's right context
(tests/test_streaming.py checks it), below the symmetric bound of inference.receptive_field_frames.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model.convs import get_padding
from model.layers import LRELU_SLOPE, ResBlock1, ResBlock2

STREAM_SIGNATURES = ("stream_step", "stream_flush", "stream_initial_state")
CONV_PRE_POST_REACH = 3  # the right reach of conv_pre and conv_post (kernel 7, padding 3)


def stream_latency_samples(cfg) -> int:
    """Samples the stream lags its input by (after n frames it has given max(0, n * hop_size - this)): every
    convolution's right reach r = d (k - 1) - p carried through each upsampling (see the module docstring)."""
    cfg = getattr(cfg, "generator", cfg)
    delay = CONV_PRE_POST_REACH
    units = 2 if cfg.resblock == "1" else 1  # convolutions per residual unit; the second one is not dilated
    for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        blocks = [sum(d * (k - 1) - get_padding(k, d) + (units - 1) * (k - 1 - get_padding(k)) for d in dilations)
                  for k, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)]
        delay = delay * rate + (kernel - rate) // 2 + max(blocks)
    return delay + CONV_PRE_POST_REACH


class _Slots:
    """The fixed-size state's layout: counters first, then caches [length, channels], in registration order."""

    def __init__(self):
        self.limits: list[int] = []  # each counter's saturation value
        self.caches: list[tuple[int, int]] = []

    def counter(self, limit: int) -> int:
        self.limits.append(limit)
        return len(self.limits) - 1

    def cache(self, length: int, channels: int) -> int:
        self.caches.append((length, channels))
        return len(self.caches) - 1

    @property
    def size(self) -> int:
        return len(self.limits) + sum(length * channels for length, channels in self.caches)


class _Pass:
    """One call's view of the state: the slots it reads, the new values it sets, packed back into one vector.
    mode "start": the general case (an utterance's start, an empty chunk); "steady": every counter saturated and a
    new frame, so nothing is dropped and every delay line is full: the same arithmetic in fewer ops (15-25 % less
    CPU per 1-frame chunk of V1 and V3, where per-op overhead dominates); "final": the utterance's end."""

    def __init__(self, slots: _Slots, state, mode: str):
        self.slots, self.steady, self.final = slots, mode == "steady", mode == "final"
        parts = tf.split(state, [len(slots.limits)] + [length * channels for length, channels in slots.caches])
        self.old_counts = parts[0]
        self.counts = tf.cast(parts[0], tf.int32)
        self.caches = [tf.reshape(part, [1, length, channels]) for part, (length, channels)
                       in zip(parts[1:], slots.caches)]
        self.new_counts = [None] * len(slots.limits)
        self.new_caches = [None] * len(slots.caches)

    def packed(self):
        """The new state [state_size]."""
        counts = self.old_counts if self.steady else tf.cast(tf.stack(self.new_counts), tf.float32)
        return tf.concat([counts] + [tf.reshape(c, [-1]) for c in self.new_caches], 0)


def _valid_conv(run: _Pass, cache: int, x, tail: int, kernel, dilation: int = 1, native: bool = True):
    """VALID convolution of [cached inputs; x; ``tail`` zeros if final] [1, context + m (+ tail), in]: one output
    per new input -> ([1, m (+ tail), out], m). Keeps the last ``context`` inputs of [cache; x] for the next call."""
    context, channels = run.slots.caches[cache]
    m = tf.shape(x)[1]
    if run.steady:
        inputs = tf.concat([run.caches[cache], x], 1)
        run.new_caches[cache] = inputs[:, -context:] if context else run.caches[cache]
        outputs = None
    else:
        outputs = m + tail if run.final else m
        # A VALID convolution needs one output at least: with no new input it runs on one more zero, dropped.
        pieces = [run.caches[cache], x, tf.zeros(tf.stack([1, tf.maximum(outputs, 1) - m, channels]))]
        inputs = tf.concat(pieces, 1)
        if not run.final:
            run.new_caches[cache] = inputs[:, m:m + context]
    if native:
        y = tf.nn.conv1d(inputs, kernel, 1, "VALID", dilations=dilation)
    else:  # SpaceToBatch, where the generator's own layer measured it faster (model/convs.py)
        y = tf.nn.convolution(inputs, kernel, padding="VALID", dilations=dilation)
    return (y if outputs is None else y[:, :outputs]), m


def _drop_leading(run: _Pass, counter: int | None, y):
    """y [1, n, C] without what falls among the first samples of the utterance that its counter's limit counts
    (the samples seen are counted across calls)."""
    if counter is None or run.steady:
        return y
    leading = run.slots.limits[counter]
    seen, n = run.counts[counter], tf.shape(y)[1]
    if not run.final:
        run.new_counts[counter] = tf.minimum(seen + n, leading)
    return y[:, tf.minimum(tf.maximum(leading - seen, 0), n):]


def _weights(wrapper) -> tuple[np.ndarray, np.ndarray]:
    """The folded (plain) kernel and the bias of a weight-normalised convolution."""
    return np.asarray(wrapper.normalized_kernel(), np.float32), np.asarray(wrapper.layer.bias, np.float32)


class _Conv(tf.Module):
    """A stride-1 convolution with torch's symmetric zero padding: [1, m, in] -> [1, m', out]."""

    def __init__(self, wrapper, slots: _Slots):
        super().__init__()
        kernel, bias = _weights(wrapper)
        self.dilation = wrapper.layer.dilation_rate[0]
        self.native = self.dilation == 1 or wrapper.layer._dilation_runs_natively()  # as the layer itself runs
        context = self.dilation * (kernel.shape[0] - 1)
        pad = wrapper.layer.pad
        if pad != (context // 2, context - context // 2) or context % 2:
            raise ValueError(f"streaming needs a symmetric 'same' padding, got {pad} for a reach of {context}")
        self.delay = context - pad[0]
        self.kernel, self.bias = tf.Variable(kernel, trainable=False), tf.Variable(bias, trainable=False)
        self.cache = slots.cache(context, kernel.shape[1])
        self.counter = slots.counter(self.delay) if self.delay else None

    def __call__(self, x, run: _Pass):
        y, _ = _valid_conv(run, self.cache, x, self.delay, self.kernel, self.dilation, self.native)
        return _drop_leading(run, self.counter, y) + self.bias


class _Upsample(tf.Module):
    """The cropped transposed convolution in polyphase form: [1, m, in] -> [1, m' (about m * rate), out]."""

    def __init__(self, wrapper, slots: _Slots):
        super().__init__()
        kernel, bias = _weights(wrapper)  # [K, out, in]
        size, out, channels = kernel.shape
        self.rate, self.crop = wrapper.layer.strides[0], wrapper.layer.pad[0]
        taps = -(-size // self.rate)
        # z[n u + r] = sum_q W[q u + r] x[n - q]: tap j of a VALID window ending at x[n] is q = taps - 1 - j.
        phases = np.zeros((taps * self.rate, out, channels), np.float32)
        phases[:size] = kernel
        phases = phases.reshape(taps, self.rate, out, channels)[::-1].transpose(0, 3, 1, 2)
        self.kernel = tf.Variable(phases.reshape(taps, channels, self.rate * out), trainable=False)
        self.bias = tf.Variable(bias, trainable=False)
        self.out = out
        self.flush_inputs = -(-self.crop // self.rate)
        self.cache = slots.cache(taps - 1, channels)
        self.counter = slots.counter(self.crop) if self.crop else None

    def __call__(self, x, run: _Pass):
        y, m = _valid_conv(run, self.cache, x, self.flush_inputs, self.kernel)
        y = tf.reshape(y, [1, -1, self.out])
        if run.final:  # the zeros fed past the end complete the last `crop` samples; the rest is cropped off
            y = y[:, :m * self.rate + self.crop]
        return _drop_leading(run, self.counter, y) + self.bias


class _Delay(tf.Module):
    """Delays a branch by ``length`` samples to align it with a slower one (fewer at the start of an utterance)."""

    def __init__(self, length: int, channels: int, slots: _Slots):
        super().__init__()
        self.length = length
        if length:
            self.cache, self.counter = slots.cache(length, channels), slots.counter(length)

    def __call__(self, x, count, run: _Pass):
        """x [1, m, C] -> the ``count`` samples [1, count, C] that the slower branch gave in this call."""
        if not self.length:
            return x
        inputs = tf.concat([run.caches[self.cache], x], 1)
        if run.steady:  # full: the slower branch gave as many samples as x has
            run.new_caches[self.cache] = inputs[:, -self.length:]
            return inputs[:, :-self.length]
        seen, m = run.counts[self.counter], tf.shape(x)[1]
        if not run.final:
            run.new_caches[self.cache] = inputs[:, m:m + self.length]
            run.new_counts[self.counter] = tf.minimum(seen + m, self.length)
        start = self.length - seen
        return inputs[:, start:start + count]


class _ResBlock(tf.Module):
    """ResBlock1 (units of two convolutions) or ResBlock2 (units of one), each unit x + convs(x)."""

    def __init__(self, block, slots: _Slots):
        super().__init__()
        if isinstance(block, ResBlock1):
            units = list(zip(block.convs1, block.convs2))
        elif isinstance(block, ResBlock2):
            units = [(conv,) for conv in block.convs]
        else:
            raise TypeError(f"cannot stream a {type(block).__name__}")
        self.units, self.skips = [], []
        for unit in units:
            self.units.append([_Conv(wrapper, slots) for wrapper in unit])
            self.skips.append(_Delay(sum(conv.delay for conv in self.units[-1]), block.channels, slots))
        self.delay = sum(skip.length for skip in self.skips)

    def __call__(self, x, run: _Pass):
        for convs, skip in zip(self.units, self.skips):
            h = x
            for conv in convs:
                h = conv(tf.nn.leaky_relu(h, LRELU_SLOPE), run)
            x = h + skip(x, tf.shape(h)[1], run)
        return x


class _Stage(tf.Module):
    """leaky ReLU, upsampling, then the mean of the parallel resblocks (each aligned to the slowest)."""

    def __init__(self, up, blocks, slots: _Slots):
        super().__init__()
        self.up = _Upsample(up, slots)
        self.blocks = [_ResBlock(block, slots) for block in blocks]
        self.delay = max(block.delay for block in self.blocks)
        self.slowest = [block.delay for block in self.blocks].index(self.delay)
        self.aligns = [_Delay(self.delay - block.delay, up.layer.filters, slots) for block in self.blocks]

    def __call__(self, x, run: _Pass):
        x = self.up(tf.nn.leaky_relu(x, LRELU_SLOPE), run)
        outs = [block(x, run) for block in self.blocks]
        count = tf.shape(outs[self.slowest])[1]
        total = None
        for out, align in zip(outs, self.aligns):
            out = align(out, count, run)
            total = out if total is None else total + out
        return total / len(self.blocks)


class StreamingModule(tf.Module):
    """The streaming generator as a tf.Module for SavedModel export. Its tf.functions, named as the signatures
    (STREAM_SIGNATURES), take and give one stream's state [state_size]: ``stream_initial_state()`` -> {state},
    ``stream_step(mel_chunk [frames >= 0, num_mels], state)`` -> {audio, state}, ``stream_flush(state)`` -> {audio}
    (the utterance's end; the next starts from the initial state). Int32 variables ``hop_size``,
    ``latency_samples`` and ``latency_frames`` describe the stream; ``counter_limits`` is where its counters
    saturate (steady state once all of them have)."""

    def __init__(self, generator, cfg):
        super().__init__()
        gen_cfg = getattr(cfg, "generator", cfg)
        if not generator.built:
            generator.build()
        slots = _Slots()
        self.num_mels = gen_cfg.num_mels
        self.conv_pre = _Conv(generator.conv_pre, slots)
        blocks = len(gen_cfg.resblock_kernel_sizes)
        self.stages = [_Stage(up, generator.resblocks[i * blocks:(i + 1) * blocks], slots)
                       for i, up in enumerate(generator.ups)]
        self.conv_post = _Conv(generator.conv_post, slots)
        self._slots = slots
        self.counter_limits = tf.Variable(slots.limits, trainable=False, dtype=tf.float32)
        self.state_size = slots.size
        delay, hop = stream_latency_samples(gen_cfg), gen_cfg.upsample_factor
        self.hop_size = tf.Variable(hop, trainable=False)
        self.latency_samples = tf.Variable(delay, trainable=False)
        self.latency_frames = tf.Variable(-(-delay // hop), trainable=False)
        mel_spec = tf.TensorSpec([None, self.num_mels], tf.float32, name="mel_chunk")
        state_spec = tf.TensorSpec([self.state_size], tf.float32, name="state")
        self.stream_step = tf.function(self._step, input_signature=[mel_spec, state_spec])
        self.stream_flush = tf.function(self._flush, input_signature=[state_spec])
        self.stream_initial_state = tf.function(self._initial_state, input_signature=[])

    def _run(self, mel, state, mode: str):
        """mel [frames, num_mels] -> (audio [samples], the pass holding the new state); mode: see _Pass."""
        run = _Pass(self._slots, state, mode)
        x = self.conv_pre(mel[None], run)
        for stage in self.stages:
            x = stage(x, run)
        # NOTE: the original's last leaky ReLU uses torch's default slope 0.01, not LRELU_SLOPE.
        x = self.conv_post(tf.nn.leaky_relu(x, 0.01), run)
        return tf.tanh(x)[0, :, 0], run

    def _step_in(self, mel_chunk, state, mode: str):
        audio, run = self._run(mel_chunk, state, mode)
        return audio, run.packed()

    def _step(self, mel_chunk, state):
        counts = state[:len(self._slots.limits)]
        steady = tf.logical_and(tf.reduce_all(tf.equal(counts, self.counter_limits)), tf.shape(mel_chunk)[0] > 0)
        audio, state = tf.cond(steady, lambda: self._step_in(mel_chunk, state, "steady"),
                               lambda: self._step_in(mel_chunk, state, "start"))
        return {"audio": audio, "state": tf.ensure_shape(state, [self.state_size])}

    def _flush(self, state):
        audio, _ = self._run(tf.zeros([0, self.num_mels]), state, "final")
        return {"audio": audio}

    def _initial_state(self):
        return {"state": tf.zeros([self.state_size])}


def streaming_module(generator, cfg) -> StreamingModule:
    """The streaming form of a Generator (weights copied, folded, at this moment; ``cfg``: HiFiGANConfig or
    GeneratorConfig). Save it with ``tf.saved_model.save(module, path, signatures=streaming_signatures(module))``."""
    return StreamingModule(generator, cfg)


def streaming_signatures(module) -> dict:
    """{name: tf.function} of a StreamingModule's serving signatures (STREAM_SIGNATURES)."""
    return {name: getattr(module, name) for name in STREAM_SIGNATURES}


class StreamingVocoder:
    """Vocodes one utterance at a time as its mel frames arrive: ``step(mel_chunk)`` returns the audio they
    determine, ``flush()`` the rest at the end of the utterance (and resets), ``reset()`` drops an utterance.

    Concatenated, the outputs equal one pass of the generator over the whole mel (within float rounding, far
    below 1 LSB of 16 bits) for every split into chunks. Latency: a frame's audio is complete once
    ``latency_frames`` more frames have arrived (V1 13, V2 13, V3 11; see the module docstring).
    """

    def __init__(self, generator, cfg):
        self._attach(streaming_module(generator, cfg))

    @classmethod
    def from_module(cls, module) -> "StreamingVocoder":
        """A StreamingVocoder over a StreamingModule, one reloaded with tf.saved_model.load, or a SavedModel that
        ``run_export.py --streaming`` wrote (its ``stream``)."""
        module = getattr(module, "stream", module)
        streamer = cls.__new__(cls)
        streamer._attach(module)
        return streamer

    def _attach(self, module) -> None:
        self.module = module
        self.num_mels = module.stream_step.input_signature[0].shape[-1]
        self.hop_size = int(module.hop_size.numpy())
        self.latency_samples = int(module.latency_samples.numpy())
        self.reset()

    @property
    def latency_frames(self) -> int:
        """Frames that must arrive after a frame before its audio is complete: ceil(latency_samples / hop)."""
        return -(-self.latency_samples // self.hop_size)

    @property
    def steady(self) -> bool:
        """Whether every layer is past the start of the utterance (the next non-empty chunk runs the lean graph)."""
        limits = self.module.counter_limits.numpy()
        return bool(np.array_equal(self._state.numpy()[:limits.size], limits))

    def reset(self) -> None:
        """Start a new utterance (whatever the current one had pending is dropped)."""
        self._state = self.module.stream_initial_state()["state"]

    def step(self, mel_chunk: np.ndarray) -> np.ndarray:
        """mel_chunk float [frames, num_mels] (any frames, 0 included) -> float32 audio [samples] determined by now."""
        mel_chunk = np.asarray(mel_chunk, np.float32)
        if mel_chunk.ndim != 2 or mel_chunk.shape[1] != self.num_mels:
            raise ValueError(f"mel chunk of shape {mel_chunk.shape}: expected [frames, {self.num_mels}]")
        out = self.module.stream_step(tf.constant(mel_chunk), self._state)
        self._state = out["state"]
        return out["audio"].numpy()

    def flush(self) -> np.ndarray:
        """The rest of the utterance's audio [samples] (its end: each layer's right zero padding); then resets."""
        audio = self.module.stream_flush(self._state)["audio"].numpy()
        self.reset()
        return audio


def stream_vocode(streamer: StreamingVocoder, mel: np.ndarray, chunk_frames: int) -> np.ndarray:
    """A whole utterance mel [frames, num_mels] through ``streamer``, ``chunk_frames`` frames at a time ->
    float32 audio [frames * hop_size]."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    streamer.reset()
    pieces = [streamer.step(mel[start:start + chunk_frames]) for start in range(0, mel.shape[0], chunk_frames)]
    return np.concatenate(pieces + [streamer.flush()])
