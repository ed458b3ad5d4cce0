"""Network architectures shared by several methods (plain, exportable ``nn.Module``s)."""

from raylab.nets.irse import (
    EmbeddingHead,
    IRSEBlock,
    IRSEConfig,
    IRSEResNet,
    IRSEStem,
    SEModule,
    StreamBatchNorm2d,
    init_face_weights,
    ir_se_resnet18,
    make_stage,
    stage_output_size,
)

__all__ = [
    "EmbeddingHead",
    "IRSEBlock",
    "IRSEConfig",
    "IRSEResNet",
    "IRSEStem",
    "SEModule",
    "StreamBatchNorm2d",
    "init_face_weights",
    "ir_se_resnet18",
    "make_stage",
    "stage_output_size",
]
