"""CKD's objective: two cross-entropies and two temperature-scaled KL terms with detached targets.

``L = CE(o_f, y) + CE(o_p, y) + tau^2 KL(softmax(o_f.detach()/tau) || softmax(o_p/tau))
                               + tau^2 KL(softmax(o_p.detach()/tau) || softmax(o_f/tau))``

(jungyg/periocular_CKD ``helper/loops.py``; KL averaged over the batch, "batchmean").  The
first KL term distils the face branch into the periocular one (face -> periocular, "f2p"),
the second the periocular branch into the face one ("p2f"): each branch learns from the
other's *detached* predictions, so a term's gradient reaches only its student branch.  The
``tau^2`` factor keeps the soft-target gradients on the scale of the cross-entropy's
(Hinton et al., 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raylab.methods.ckd.config import Variant


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``tau^2 KL(softmax(teacher/tau) || softmax(student/tau))``, batch mean; the teacher is detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    target = F.softmax(teacher_logits.detach() / tau, dim=1)
    return tau * tau * F.kl_div(F.log_softmax(student_logits / tau, dim=1), target, reduction="batchmean")


def ckd_loss(
    face_logits: Tensor | None, periocular_logits: Tensor, labels: Tensor, variant: Variant, tau: float
) -> dict[str, Tensor]:
    """The loss terms of ``variant`` and their sum (``"loss"``); absent terms are 0."""
    zero = periocular_logits.new_zeros(())
    terms = {
        "ce_periocular": F.cross_entropy(periocular_logits, labels),
        "ce_face": zero,
        "kl_f2p": zero,
        "kl_p2f": zero,
    }
    if variant.use_face:
        if face_logits is None:
            raise ValueError("the variant trains a face branch but no face logits were given")
        terms["ce_face"] = F.cross_entropy(face_logits, labels)
        if variant.f2p:
            terms["kl_f2p"] = distillation_kl(periocular_logits, face_logits, tau)
        if variant.p2f:
            terms["kl_p2f"] = distillation_kl(face_logits, periocular_logits, tau)
    terms["loss"] = torch.stack(list(terms.values())).sum()
    return terms
