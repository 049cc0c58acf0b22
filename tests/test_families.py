"""The families registry: one place per model generation, asked by every other module."""

from __future__ import annotations

import ast
import pathlib

import pytest

from vlutils import families
from vlutils.errors import InvalidOptionError
from vlutils.families import FAMILIES, USES, Family, GroundingStyle, get_family, model_types
from vlutils.families.base import CLIP_MEAN


@pytest.fixture
def grounding_only(monkeypatch):
    """A registered family that supports grounding only (every real one now supports all uses)."""
    toy = Family("toy_vl", "Toy-VL", frozenset({"grounding"}), grounding=GroundingStyle("json", 1000, 1000))
    monkeypatch.setitem(FAMILIES, "toy_vl", toy)
    return toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_registry_order_and_names():
    assert families.MODEL_TYPES == (
        "qwen_vl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    for name, family in FAMILIES.items():
        assert isinstance(family, Family) and family.model_type == name
        assert set(family.uses) <= set(USES)
    modules = {p.stem for p in (ROOT / "vlutils/families").glob("*.py")} - {"__init__", "base", "moe"}
    assert modules == set(FAMILIES)  # one module per generation, named as its model_type
    for module in families._MODULES:
        assert module.__name__.rsplit(".", 1)[1] == module.FAMILY.model_type


def test_prepare_accepts_every_model_type_build_sample_accepts():
    assert set(model_types("train")) <= set(model_types("prepare"))
    assert {"qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"} <= set(model_types("prepare"))


def test_moe_variants_share_their_dense_family_inputs():
    for moe, dense in (("qwen3_vl_moe", "qwen3_vl"), ("qwen3_5_moe", "qwen3_5")):
        a, b = FAMILIES[moe], FAMILIES[dense]
        assert a.shares_inputs_with == dense and a.inputs_model_type == dense
        for field in ("vision", "chat", "position_ids", "video_timestamps", "grounding", "uses", "media"):
            assert getattr(a, field) == getattr(b, field), field


def test_facts_match_the_published_processors():
    # patch 14 / CLIP statistics for Qwen2(.5)-VL, patch 16 / 0.5 for Qwen3-VL and Qwen3.5 (their
    # preprocessor_config.json files); merge 2 and temporal patch 2 everywhere.
    for name in [n for n in model_types("inputs") if FAMILIES[n].pipeline == "patches"]:
        vision = FAMILIES[name].vision
        assert (vision.merge_size, vision.temporal_patch_size) == (2, 2)
        assert vision.patch_size == (14 if name.startswith("qwen2") else 16)
        assert FAMILIES[name].min_pixels == 4 * vision.factor**2
        assert FAMILIES[name].max_pixels == 16384 * vision.factor**2
    assert FAMILIES["qwen2_vl"].chat.default_system_prompt == "You are a helpful assistant."
    assert FAMILIES["qwen3_vl"].chat.default_system_prompt is None
    assert [FAMILIES[n].position_ids for n in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")] == [
        "mrope", "mrope_timed", "mrope_per_frame", "mrope_per_frame"]
    # Qwen-VL (visual.py): patch 14, CLIP statistics, no merge, images only, 1-D positions, its own pipeline
    qwen_vl = FAMILIES["qwen_vl"]
    assert (qwen_vl.vision.patch_size, qwen_vl.vision.merge_size, qwen_vl.vision.image_mean) == (14, 1, CLIP_MEAN)
    assert (qwen_vl.position_ids, qwen_vl.media, qwen_vl.pipeline) == ("text", frozenset({"image"}), "fixed_span")
    assert qwen_vl.chat.default_system_prompt == "You are a helpful assistant."


def test_errors_name_the_model_type_and_the_known_ones(grounding_only):
    with pytest.raises(InvalidOptionError, match=r"unknown model_type 'llava'.*qwen2_vl.*qwen3_5_moe"):
        get_family("llava")
    with pytest.raises(InvalidOptionError, match=r"'toy_vl' \(Toy-VL\) does not support train.*qwen2_vl"):
        get_family("toy_vl", "train")
    with pytest.raises(InvalidOptionError, match="must be a string"):
        get_family(None)
    with pytest.raises(InvalidOptionError, match="unknown model_type 'Qwen2.5-VL'"):
        get_family("Qwen2.5-VL")  # strict unless asked
    assert get_family("Qwen2.5-VL", loose=True) is FAMILIES["qwen2_5_vl"]
    with pytest.raises(ValueError, match="use must be one of"):
        model_types("serving")


def test_entry_points_refuse_an_unsupported_family_clearly(grounding_only):
    from vlutils.data.prepare import resolve_spec
    from vlutils.data.spec import DatasetSpec
    from vlutils.errors import InvalidSpecError
    from vlutils.inputs import build_inputs
    from vlutils.train.sample import build_sample

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    for call in (lambda: build_inputs(messages, object(), "toy_vl"), lambda: build_sample(messages, object(), "toy_vl")):
        with pytest.raises(InvalidOptionError, match="toy_vl"):
            call()
    with pytest.raises(InvalidSpecError, match="model_type 'toy_vl'"):
        resolve_spec(DatasetSpec(sources=(), model_type="toy_vl"))
    # Qwen-VL is supported everywhere, and refuses a tokenizer that is not its own by name
    for call in (lambda: build_inputs(messages[:1], object(), "qwen_vl"), lambda: build_sample(messages, object(), "qwen_vl")):
        with pytest.raises(InvalidOptionError, match="qwen_vl"):
            call()


def test_vlmodel_families_are_vlutils_families():
    from vlmodel import config

    for name in config.FAMILIES:
        assert name in FAMILIES
        raw_type = get_family(name).inputs_model_type
        assert raw_type in model_types("inputs")


# ---- no other module lists model types ------------------------------------------------

# Architecture tables of vlmodel, keyed by model type on purpose (see vlutils.families' docstring).
ALLOWED = {"vlmodel/config.py", "vlmodel/weights.py"}


def _model_type_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Model-type strings used as data: in a tuple/list/set/dict key, or compared against."""
    names = set(FAMILIES)
    found = []

    def is_name(node):
        return isinstance(node, ast.Constant) and node.value in names

    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            found += [(e.lineno, e.value) for e in node.elts if is_name(e)]
        elif isinstance(node, ast.Dict):
            found += [(k.lineno, k.value) for k in node.keys if k is not None and is_name(k)]
        elif isinstance(node, ast.Compare):
            found += [(c.lineno, c.value) for c in [node.left, *node.comparators] if is_name(c)]
    return found


def test_no_module_outside_the_families_lists_model_types():
    offenders = []
    for package in ("vlutils", "vlmodel"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("vlutils/families/") or rel in ALLOWED:
                continue
            offenders += [f"{rel}:{line} {value!r}" for line, value in _model_type_literals(ast.parse(path.read_text()))]
    assert not offenders, "model types listed outside vlutils/families:\n" + "\n".join(offenders)


def test_the_literal_finder_finds_lists_and_comparisons():
    tree = ast.parse('A = ("qwen2_vl", "x")\nif t == "qwen3_vl": pass\nB = {"qwen3_5": 1}\ndef f(t="qwen2_vl"): pass')
    assert sorted(_model_type_literals(tree)) == [(1, "qwen2_vl"), (2, "qwen3_vl"), (3, "qwen3_5")]


def test_the_docs_table_is_the_registry():
    """docs/development-families.md shows scripts/families_table.py's output (regenerate it when a family changes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("families_table", ROOT / "scripts" / "families_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "development-families.md").read_text()
    shown = page.split("-->\n", 1)[1].split("\n<!-- /families-table -->", 1)[0].strip()
    assert shown == module.table(), "run: python scripts/families_table.py and paste it into the page"
