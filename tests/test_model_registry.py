from typing import Any

import ape
from eth_utils import keccak

from contract_helpers import MODEL, MODEL_SHA, TOKENIZER_SHA


def test_model_id_matches_original_scheme(models: Any) -> None:
    repo, file = MODEL
    assert bytes(models.modelIdOf(repo, file)) == keccak(f"{repo}/{file}".encode())


def test_add_model_stores_hashes_and_emits(models: Any, owner: Any) -> None:
    receipt = models.addModel("org/repo", "m.gguf", MODEL_SHA, TOKENIZER_SHA, 2, sender=owner)
    model_id = models.modelIdOf("org/repo", "m.gguf")
    [event] = receipt.events.filter(models.ModelAdded)
    assert bytes(event.modelId) == bytes(model_id)
    assert bytes(event.sha256Hash) == MODEL_SHA
    assert bytes(event.tokenizerHash) == TOKENIZER_SHA
    model = models.getModel(model_id)
    assert bytes(model.sha256Hash) == MODEL_SHA
    assert bytes(model.tokenizerHash) == TOKENIZER_SHA
    assert model.tier == 2 and model.active
    assert models.isActive(model_id)


def test_add_models_batch(models: Any, owner: Any) -> None:
    inputs = [
        ("org/a", "a.gguf", MODEL_SHA, TOKENIZER_SHA, 1),
        ("org/b", "b.gguf", MODEL_SHA, b"\x33" * 32, 1),
    ]
    receipt = models.addModels(inputs, sender=owner)
    assert len(receipt.events.filter(models.ModelAdded)) == 2
    b = models.modelIdOf("org/b", "b.gguf")
    assert models.isActive(b)
    assert bytes(models.getModel(b).tokenizerHash) == b"\x33" * 32


def test_batch_is_atomic(models: Any, owner: Any) -> None:
    inputs = [("org/a", "a.gguf", MODEL_SHA, TOKENIZER_SHA, 1)] * 2
    with ape.reverts(models.ModelAlreadyExists):
        models.addModels(inputs, sender=owner)
    assert not models.isActive(models.modelIdOf("org/a", "a.gguf"))


def test_deactivate_and_reactivate(models: Any, owner: Any, model_id: bytes) -> None:
    receipt = models.deactivateModel(model_id, sender=owner)
    assert receipt.events.filter(models.ModelDeactivated)
    assert not models.isActive(model_id)
    with ape.reverts(models.ModelNotActive):
        models.deactivateModel(model_id, sender=owner)
    receipt = models.reactivateModel(model_id, sender=owner)
    assert receipt.events.filter(models.ModelReactivated)
    assert models.isActive(model_id)
    with ape.reverts(models.ModelAlreadyActive):
        models.reactivateModel(model_id, sender=owner)


def test_errors(models: Any, owner: Any, stranger: Any, model_id: bytes) -> None:
    with ape.reverts(models.ModelAlreadyExists):
        models.addModel(*MODEL, MODEL_SHA, TOKENIZER_SHA, 1, sender=owner)
    with ape.reverts(models.EmptyModelName):
        models.addModel("", "x.gguf", MODEL_SHA, TOKENIZER_SHA, 1, sender=owner)
    with ape.reverts(models.ZeroHash):
        models.addModel("org/x", "x.gguf", b"\x00" * 32, TOKENIZER_SHA, 1, sender=owner)
    with ape.reverts(models.ZeroHash):  # the tokenizer is pinned too
        models.addModel("org/x", "x.gguf", MODEL_SHA, b"\x00" * 32, 1, sender=owner)
    unknown = b"\x42" * 32
    with ape.reverts(models.UnknownModel):
        models.getModel(unknown)
    with ape.reverts(models.UnknownModel):
        models.deactivateModel(unknown, sender=owner)
    with ape.reverts(models.OwnableUnauthorizedAccount):
        models.addModel("org/x", "x.gguf", MODEL_SHA, TOKENIZER_SHA, 1, sender=stranger)
    assert not models.isActive(unknown)
