"""``python -m uabnn_convert.train RECIPE --data PATH [--resume latest] ...``"""

import typer

from .command import finetune_command

typer.run(finetune_command)
