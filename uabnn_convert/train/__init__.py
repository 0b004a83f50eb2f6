"""Fine-tuning harness: recipes, exact resume, metrics, plots, multi-process training.

    from uabnn_convert.train import finetune
    result = finetune("recipes/digits.yaml")                  # or a bundled name: "digits"
    result = finetune("recipes/cifar10_wrn22_16.yaml", data="~/data", sign_baseline=True)

Command line: ``python -m uabnn_convert.train RECIPE --data PATH [--resume latest]``;
``torchrun --nproc_per_node N -m uabnn_convert.train ...`` for several processes.
"""

from .errors import DataError, RecipeError, ResumeError, TrainError
from .harness import FinetuneResult, TrainState, build_model, finetune
from .recipe import Recipe, load_recipe

__all__ = [
    "DataError",
    "FinetuneResult",
    "Recipe",
    "RecipeError",
    "ResumeError",
    "TrainError",
    "TrainState",
    "build_model",
    "finetune",
    "load_recipe",
]
