"""Fine-tuning harness: recipes, exact resume, metrics, plots, multi-process training.

    from uabnn_convert.train import finetune
    result = finetune("digits")                                  # a bundled recipe, or a YAML
    result = finetune("digits", init="model.uabnn.pt")           # from a converted file
    result = finetune(resume="latest", out="runs/digits")        # continue a run exactly

Command line: ``uabnn-convert finetune RECIPE [--init FILE] [--resume latest]``;
``torchrun --nproc_per_node N -m uabnn_convert finetune ...`` for several processes.
"""

from .build import ModelSource, build_model
from .errors import DataError, RecipeError, ResumeError, TrainError
from .harness import FinetuneResult, TrainState, finetune
from .recipe import Recipe, load_recipe

__all__ = [
    "DataError",
    "FinetuneResult",
    "ModelSource",
    "Recipe",
    "RecipeError",
    "ResumeError",
    "TrainError",
    "TrainState",
    "build_model",
    "finetune",
    "load_recipe",
]
