"""train.optimizer.MuonAdamW: which parameters each part takes, one learning rate for both, exact resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from litgpt import GPT, Config

from train.optimizer import MuonAdamW

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(Config(**{**SETTINGS["model_config"], "block_size": 64}))


def optimizer_for(model: GPT) -> MuonAdamW:
    return MuonAdamW(model.parameters(), **SETTINGS["optimizer"]["init_args"])


def train(model: GPT, optimizer: MuonAdamW, steps: int, seed: int, same_batch: bool = False) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    draws = 1 if same_batch else steps
    batches = [torch.randint(0, 320, (2, 65), generator=generator) for _ in range(draws)]
    losses = []
    for step in range(steps):
        batch = batches[step % draws]
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_the_tiny_config_uses_it_with_the_models_vocabulary() -> None:
    assert SETTINGS["optimizer"]["class_path"] == "train.optimizer.MuonAdamW"
    assert SETTINGS["optimizer"]["init_args"]["vocab_size"] == SETTINGS["model_config"]["padded_vocab_size"]


def test_muon_takes_the_hidden_matrices_and_adamw_the_embedding_head_and_vectors() -> None:
    model = tiny_model()
    optimizer = optimizer_for(model)
    names = {id(p): name for name, p in model.named_parameters()}
    muon = {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    adamw = {names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]}
    assert muon.isdisjoint(adamw) and muon | adamw == set(names.values())
    assert {"lm_head.weight", "transformer.wte.weight", "transformer.ln_f.weight"} <= adamw
    assert "transformer.h.0.attn.qkv.weight" in muon and "transformer.h.1.mlp.proj.weight" in muon
    assert all(model.get_parameter(name).ndim == 2 for name in muon)


def test_a_learning_rate_set_on_its_groups_drives_both_parts() -> None:
    # LitGPT's warm-up and cosine schedule writes group["lr"] on optimizer.param_groups every step
    optimizer = optimizer_for(tiny_model())
    for group in optimizer.param_groups:
        group["lr"] = 1.2345e-3
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] == 1.2345e-3
    assert optimizer.defaults["lr"] == SETTINGS["optimizer"]["init_args"]["lr"]


def test_it_learns_and_a_restored_state_continues_exactly(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = optimizer_for(model)
    train(model, optimizer, 3, seed=1)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "state.pth")
    uninterrupted = train(model, optimizer, 3, seed=2)

    saved = torch.load(tmp_path / "state.pth")
    restored_model = tiny_model(seed=99)
    restored_model.load_state_dict(saved["model"])
    restored = optimizer_for(restored_model)
    groups = restored.param_groups  # the list a wrapper (Fabric's) holds
    restored.load_state_dict(saved["optimizer"])
    assert train(restored_model, restored, 3, seed=2) == uninterrupted
    for group in groups:  # the schedule still reaches both parts after a restore
        group["lr"] = 2.5e-4
    assert restored.muon.param_groups[0]["lr"] == restored.adamw.param_groups[0]["lr"] == 2.5e-4
    assert len(restored.state) == len(optimizer.state) == len(list(model.parameters()))  # every moment came back
    assert all("momentum_buffer" in restored.state[p] for group in restored.muon.param_groups for p in group["params"])

    memorise = train(model, optimizer, 10, seed=3, same_batch=True)
    assert memorise[-1] < memorise[0] - 1.0, memorise  # one batch seen again and again is learnt


def test_each_step_is_torchs_muon_and_adamw() -> None:
    """The Muon step (written out so that it can gather sharded matrices) is torch.optim.Muon's, bit for bit."""
    ours, theirs = tiny_model(), tiny_model()
    optimizer = optimizer_for(ours)
    args = SETTINGS["optimizer"]["init_args"]
    reference = optimizer_for(theirs)  # its groups split the parameters; step them with torch's own optimizers
    muon = torch.optim.Muon([p for g in reference.muon.param_groups for p in g["params"]], lr=args["lr"],
                            weight_decay=args["weight_decay"], adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([p for g in reference.adamw.param_groups for p in g["params"]], lr=args["lr"],
                              weight_decay=args["weight_decay"], betas=args["betas"])

    class Both:
        def step(self) -> None:
            muon.step()
            adamw.step()

        def zero_grad(self) -> None:
            muon.zero_grad()
            adamw.zero_grad()

    assert train(ours, optimizer, 4, seed=5) == train(theirs, Both(), 4, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_a_state_from_another_optimizer_is_refused() -> None:
    model = tiny_model()
    adamw_state = torch.optim.AdamW(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="not a MuonAdamW state"):
        optimizer_for(model).load_state_dict(adamw_state)


def test_a_wrong_vocabulary_size_or_flat_shards_are_refused() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="no matrix with vocab_size=1000 rows"):
        MuonAdamW(model.parameters(), vocab_size=1000)
    flat = [torch.nn.Parameter(p.detach().flatten()) for p in model.parameters()]  # what FSDP shards look like
    with pytest.raises(ValueError, match="FSDP1's flat shards are not matrices"):
        MuonAdamW(flat, vocab_size=320)
