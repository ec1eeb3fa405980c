"""A teacher that exists only as an ONNX file: black-box logit distillation through onnxruntime.

The file's bytes live in the module as a uint8 buffer, so the teacher step writes an ordinary kdflow
checkpoint (``arch: onnx``, loadable with ``weights_only=True``) and every consumer (distill, the offline
cache, evaluate, reuse, manifests) reads it like any other teacher. The model has no parameters and no
submodules: nothing to train, no gradients (data-free distillation, which backpropagates through the
teacher, is refused) and no features to tap (feature and relation losses are refused).

Inputs are the dataset-normalised images every kdflow model gets. A model whose output is probabilities
(a softmax at the end) is detected when it is loaded and its outputs are taken as log-probabilities, which
are logits up to a per-row constant: softmax(log p / T) is exactly what the logits would give.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

ARCH = "onnx"


def is_black_box(model: nn.Module) -> bool:
    """A teacher given as an ONNX file (or an ensemble with one among its members): logits only, no gradients,
    no modules to tap."""
    return any(isinstance(m, OnnxTeacher) for m in model.modules())


class OnnxTeacher(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.register_buffer("onnx_bytes", torch.empty(0, dtype=torch.uint8))
        self.register_buffer("outputs_probabilities", torch.zeros((), dtype=torch.bool))
        self._session = None

    @classmethod
    def from_bytes(cls, data: bytes, num_classes: int, in_channels: int) -> OnnxTeacher:
        model = cls(num_classes, in_channels)
        model.onnx_bytes = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
        return model

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        blob = state_dict.get(prefix + "onnx_bytes")
        if blob is not None:
            self.onnx_bytes = torch.empty_like(blob)  # the file's length is the checkpoint's, not the fresh module's
        self._session = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def session(self):
        """The onnxruntime session, made once from the bytes (CPU, torch's thread count)."""
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(
                self.onnx_bytes.cpu().numpy().tobytes(), opts, providers=["CPUExecutionProvider"]
            )
        return self._session

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The file's first output on ``x`` (in chunks of the model's batch size when that is fixed)."""
        sess = self.session()
        inp = sess.get_inputs()[0]
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        if fixed is None:
            return torch.from_numpy(sess.run(None, {inp.name: arr})[0]).float()
        outs = []
        for i in range(0, len(arr), fixed):
            chunk = arr[i : i + fixed]
            pad = fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
            outs.append(sess.run(None, {inp.name: chunk})[0][: fixed - pad])
        return torch.from_numpy(np.concatenate(outs)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        if bool(self.outputs_probabilities):
            out = out.clamp_min(torch.finfo(torch.float32).tiny).log()  # exact down to float32 underflow
        return out.to(x.device)

    def __getstate__(self):  # a session does not pickle (DDP, deepcopy): it is rebuilt from the bytes
        state = self.__dict__.copy()
        state["_session"] = None
        return state
