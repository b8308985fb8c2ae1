"""Every registered method follows the protocol (selfsup/protocol.py), checked fast and for free:
a new method joins these tests by its registry line and its config's `tiny` settings.

One forward and backward per parameter set on a small batch of real inputs (the method's own
views of digits): the output's types, every trainable parameter reached by its set's loss (DDP
needs it), buffers left alone until `on_step_end`, seeded draws, hook signatures, pictures.
The slower registry-wide checks (training, checkpoints, exact resume, 2-process DDP) are in
test_train.py and test_distributed.py.
"""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from selfsup.methods import METHODS
from selfsup.protocol import OPTIONAL_HOOKS, Method, Output, Progress, hook, param_sets, set_parameters
from selfsup.train.trainer import Trainer

# The parameters each hook takes, by name (selfsup/protocol.py).
HOOK_PARAMETERS = {"init_from_data": ["sample", "seed"], "param_sets": [],
                   "prepare": ["views", "generator"], "on_after_backward": ["progress"],
                   "on_step_end": ["progress", "state"], "pictures": ["views"],
                   "make_tokenizer": ["texts"]}
PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's


@pytest.fixture(scope="module", params=sorted(METHODS))
def built(request, tmp_path_factory):
    method = request.param
    cfg = tiny_config(method, f"trainer.out={tmp_path_factory.mktemp(method)}")
    trainer = Trainer(cfg, run_dir=tmp_path_factory.mktemp(method) / "run")
    init = hook(trainer.model, "init_from_data")
    if init:
        init(lambda k: trainer.sample_views(k, 0), seed=0)
    return method, trainer


def test_config_and_hooks_follow_the_protocol(built):
    method, trainer = built
    model, cls = trainer.model, METHODS[method]
    assert isinstance(model, Method) and model.backbone is trainer.model.backbone
    assert dataclasses.is_dataclass(cls.config_class)
    assert cls.config_class().name == method, "the config's name is the registry key"
    assert isinstance(cls.config_class.tiny, tuple) and all("=" in o for o in cls.config_class.tiny)
    for name in OPTIONAL_HOOKS:
        fn = hook(model, name)
        if fn is not None:
            assert list(inspect.signature(fn).parameters) == HOOK_PARAMETERS[name], name
    assert list(inspect.signature(model.forward).parameters) == ["views", "progress"]


def test_every_set_reaches_its_parameters_and_buffers_wait_for_the_step(built):
    method, trainer = built
    model = trainer.model
    x, texts = trainer.feed.gather(torch.arange(32))  # texts: an image-text method's captions
    views = trainer.make_views(x, aug_seed=3, texts=texts)
    again = trainer.make_views(x, aug_seed=3, texts=texts)
    assert all(torch.equal(a, b) for a, b in zip(views, again)), "draws must follow the seed only"
    buffers = {n: b.clone() for n, b in model.named_buffers() if not n.endswith(PER_RANK_BUFFERS)}
    progress = Progress(0, 10, 20)
    model.train()
    state = {}
    for s in param_sets(model):
        model.zero_grad(set_to_none=True)
        out = s.loss(views, progress)
        assert isinstance(out, Output), f"{s.name}: a loss returns selfsup.protocol.Output"
        assert out.loss.dim() == 0 and torch.isfinite(out.loss), s.name
        for k, v in (out.metrics or {}).items():
            ok = isinstance(v, (int, float)) or (torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad)
            assert ok, f"metric {k} must be a number or a detached 0-dim tensor"
        out.loss.backward()
        names = {id(p): n for n, p in model.named_parameters()}
        missing = [names[id(p)] for p in set_parameters(s) if p.grad is None]
        assert not missing, f"{s.name}: no gradient for {missing[:3]} (DDP would stop)"
        state.update(out.state or {})
    for n, b in model.named_buffers():
        if n in buffers:
            assert torch.equal(b, buffers[n]), f"buffer {n} changed before on_step_end"
    on_step_end = hook(model, "on_step_end")
    if on_step_end:
        on_step_end(progress, state)
    elif state:
        pytest.fail("Output.state given but there is no on_step_end to take it")


def test_pictures_are_rows_of_one_shape(built):
    _, trainer = built
    if hook(trainer.model, "pictures") is None:
        pytest.skip("the method draws no pictures")
    with torch.no_grad():
        grids = trainer.model.eval().pictures(trainer.sample_views(4, 0))
    trainer.model.train()
    for name, rows in grids.items():
        assert len({tuple(r.shape) for r in rows}) == 1 and rows[0].shape[0] == 4, name


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "selfsup" / "methods").glob("*.py")),
                         ids=lambda p: p.stem)
def test_no_method_imports_another(path):
    if path.stem == "__init__":
        return
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(f"selfsup.methods.{node.module or ''}" if node.level else node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    others = sorted(m for m in imported if m.startswith("selfsup.methods"))
    assert not others, f"{path.name} imports {others}: shared pieces belong in selfsup.parts or selfsup.losses"
