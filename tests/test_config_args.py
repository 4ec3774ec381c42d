"""Config files load by bare name (as notebooks do) or by path, with their argument language."""
import os

import pytest

from lfvit_jax.core.config_args import load_config, parse_arg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_by_name_and_by_path():
    by_name = load_config("demo.py:runlocal")
    by_path = load_config(os.path.join(ROOT, "configs", "demo.py") + ":runlocal")
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.total_steps == 8 and load_config("demo.py").total_steps == 0
    assert load_config("lfvit_deit_s.py:res=288,m=6").model.img_size == 288


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="not found"):
        load_config("nope.py")
    with pytest.raises(ValueError, match="Unknown config argument 'rez'"):
        parse_arg("rez=288", res=224)
