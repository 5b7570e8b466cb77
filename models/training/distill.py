"""Distillation from an exported teacher (`fervid train --teacher PATH`): the student learns the teacher's softened
probabilities beside the labels (Hinton et al. 2015).

The teacher sees the very batch the student sees, after augmentation (crop, flip, erasing, mixup): its
probabilities must describe the picture the student is scored on, not the clean face it came from. It runs through
ONNX Runtime on the CPU, as any `fervid export` output (an ensemble, an INT8 file) runs; the augmented batch is
resized to the teacher's input and normalised the way its metadata says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor

from fervid.errors import INVALID_MODEL, FervidError
from models.spec import read_model_spec


class OnnxTeacher:
    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            spec = read_model_spec(path)
        except (FileNotFoundError, ValueError) as error:
            raise FervidError(f"teacher {path}: {error}", code=INVALID_MODEL) from error
        self.preprocess = spec.preprocess
        self.output = spec.output
        self.hflip = spec.tta == "hflip"  # the teacher's probabilities as it is shipped: averaged with the mirror
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @torch.no_grad()
    def probs(self, pixels: Tensor) -> Tensor:
        """(B, 7) probabilities of (B, 1, H, W) augmented faces in [0, 1], on the faces' device."""
        height, width = self.preprocess.size
        batch = pixels.float()
        if batch.shape[-2:] != (height, width):
            batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
        batch = batch.expand(-1, self.preprocess.channels, -1, -1) * (255.0 * self.preprocess.scale)
        mean = torch.tensor(self.preprocess.mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess.std, device=batch.device).view(1, -1, 1, 1)
        batch = ((batch - mean) / std).cpu().contiguous()
        views = [batch, torch.flip(batch, dims=[3])] if self.hflip else [batch]
        outputs = []
        for view in views:
            (raw,) = self.session.run(None, {self.input_name: view.numpy()})
            out = torch.from_numpy(np.asarray(raw, dtype=np.float32))
            outputs.append(out if self.output == "probs" else torch.softmax(out, dim=1))
        return torch.stack(outputs).mean(0).to(pixels.device)


def distillation_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) at `temperature`, times T^2 so its gradients keep their scale as T changes."""
    teacher_soft = torch.softmax(torch.log(teacher_probs.clamp_min(1e-8)) / temperature, dim=1)
    student_log = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(student_log, teacher_soft, reduction="batchmean") * temperature**2
