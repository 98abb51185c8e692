"""The config schema's name lists are generated from the catalogue (pathomix.schema) and checked here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pathomix import catalog, schema

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def _enum(text: str, *path: str) -> list[str]:
    node = yaml.safe_load(text)
    for key in path:
        node = node[key]
    return node["enum"]


def test_the_schema_is_generated_from_the_catalogue():
    text = SCHEMA.read_text()
    assert schema.check(text) == []
    assert schema.render(text) == text
    variant = ("properties", "train", "properties", "variants", "additionalProperties", "properties")
    assert _enum(text, *variant, "model") == list(catalog.MODELS)
    assert _enum(text, "properties", "train", "properties", "tasks", "items") == list(catalog.TASK_NAMES)
    assert _enum(text, "properties", "features", "properties", "encoder") == list(catalog.ENCODERS)
    assert _enum(text, "properties", "evaluate", "properties", "headline", "items") == list(catalog.metric_names())
    assert {"auc", "c_index"} <= set(catalog.metric_names()) and "fof" in catalog.MODELS
    # train.models takes variant names too: a pattern, no enum
    assert "enum" not in yaml.safe_load(text)["properties"]["train"]["properties"]["models"]["items"]


def test_a_stale_schema_is_reported_and_regenerated(tmp_path):
    text = SCHEMA.read_text()
    models = ", ".join(catalog.MODELS)
    without_fof = models.replace(", fof", "")
    assert without_fof != models
    stale = text.replace(f"model: {{enum: [{models}]}}", f"model: {{enum: [{without_fof}]}}")
    stale = stale.replace(f"registered models ({models})", f"registered models ({without_fof}, cox)")
    stale = stale.replace("encoder: {enum: [resnet50_trunc, ", "encoder: {enum: [")
    assert stale.count("fof") == text.count("fof") - 2
    problems = schema.check(stale)
    assert len(problems) == 3, problems
    assert any("variants" in p and "lacks ['fof']" in p for p in problems)
    assert any("train.properties.models.description" in p and "lacks ['fof']" in p and "unknown ['cox']" in p
               for p in problems)
    assert any("encoder" in p and "lacks ['resnet50_trunc']" in p for p in problems)
    # a reordered enum is stale too (the file is generated, so a diff shows a real change)
    swapped_models = models.replace("abmil, snn", "snn, abmil")
    swapped = text.replace(f"model: {{enum: [{models}]}}", f"model: {{enum: [{swapped_models}]}}")
    assert swapped != text and len(schema.check(swapped)) == 1

    path = tmp_path / "config.schema.yaml"
    path.write_text(stale)
    assert schema.main(["--check", "--schema", str(path)]) == 1
    assert path.read_text() == stale  # --check writes nothing
    assert schema.main(["--schema", str(path)]) == 0
    assert path.read_text() == text  # only the generated lines changed back; comments and order kept
    assert schema.main(["--check", "--schema", str(path)]) == 0


def test_a_new_catalogue_name_makes_the_schema_stale(monkeypatch):
    from pathomix.catalog import entries

    monkeypatch.setitem(entries.MODELS, "abmil2", catalog.ModelEntry("abmil2", "pathomix.models.abmil:build",
                                                                     reads=("wsi",)))
    text = SCHEMA.read_text()
    problems = schema.check(text)
    assert len(problems) == 2 and all("lacks ['abmil2']" in p for p in problems), problems
    assert schema.check(schema.render(text)) == []


def test_a_schema_without_a_generated_line_is_refused():
    text = SCHEMA.read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("encoder: {enum:"))
    broken = text.replace(line, line.split("encoder:")[0] + "encoder: {type: string}")
    with pytest.raises(ValueError, match="features.properties.encoder"):
        schema.render(broken)
    assert any("encoder: no encoders list" in p for p in schema.check(broken))
