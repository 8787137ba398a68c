"""The deep-SCM core on tensors: graphs, Gumbel-max abduction, counterfactual identities."""

import pytest
import torch

from bidsharmony.scm import CausalGraph, FlowSCM, NodeSpec, TrainingConfig, train_scm
from bidsharmony.scm.graph import harmonization_graph
from bidsharmony.scm.mechanisms import CategoricalMechanism


def test_graph_orders_parents_first_and_rejects_cycles():
    graph = CausalGraph([NodeSpec("x", "continuous", parents=["a", "s"], dim=3),
                         NodeSpec("s", "binary"), NodeSpec("a", "continuous", parents=["s"])])
    assert graph.order.index("s") < graph.order.index("a") < graph.order.index("x")
    assert graph.descendants(["s"]) == {"a", "x"}
    with pytest.raises(ValueError, match="cycle"):
        CausalGraph([NodeSpec("a", "continuous", parents=["b"]), NodeSpec("b", "continuous", parents=["a"])])
    with pytest.raises(ValueError, match="unknown parent"):
        CausalGraph([NodeSpec("a", "continuous", parents=["zz"])])


def test_table6_graph():
    graph = harmonization_graph(4, 10, extra_parents={"icv": "continuous"})
    assert graph.parents("x") == ["sex", "age", "site", "icv"]
    assert graph.nodes["site"].categories == 4 and graph.nodes["sex"].kind == "binary"
    assert graph.nodes["age"].log_transform and graph.nodes["age"].flow == "linear-spline"
    assert all(not graph.parents(n) for n in ("sex", "site", "age", "icv"))


def _discrete_child_mechanism():
    spec = NodeSpec("y", "categorical", parents=["p"], categories=4)
    torch.manual_seed(0)
    return CategoricalMechanism(spec, {"p": 2}).double()


def test_gumbel_posterior_reproduces_the_observation():
    """Eq. C.3: every posterior noise draw regenerates the observed category (Eq. C.4 with the
    same parents), and raising only the observed category's odds cannot change it."""
    mechanism = _discrete_child_mechanism()
    context = torch.randn(4000, 2, dtype=torch.float64)
    observed = torch.randint(0, 4, (4000,))
    generator = torch.Generator().manual_seed(1)
    noise = mechanism.abduct(observed, context, generator)
    assert torch.equal(mechanism.predict(noise, context), observed)
    logits = mechanism.logits(4000, context)
    boosted = logits.scatter_add(-1, observed.view(-1, 1), torch.full((4000, 1), 2.0, dtype=torch.float64))
    assert torch.equal(torch.argmax(noise + boosted, dim=-1), observed)


def test_gumbel_posterior_has_the_right_marginal():
    """Averaged over the observation, posterior noise is again Gumbel(0, 1) noise: sampling y
    and abducting must give eps with mean Euler's gamma (0.5772) and variance pi^2/6."""
    mechanism = _discrete_child_mechanism()
    generator = torch.Generator().manual_seed(2)
    context = torch.randn(20000, 2, dtype=torch.float64)
    prior_noise = mechanism.sample_noise(20000, generator)
    observed = mechanism.predict(prior_noise, context)
    posterior = mechanism.abduct(observed, context, generator)
    assert posterior.mean().item() == pytest.approx(0.5772, abs=0.02)
    assert posterior.var().item() == pytest.approx(torch.pi ** 2 / 6, rel=0.03)


def _toy_values(n=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sex = torch.randint(0, 2, (n,), generator=generator)
    site = torch.randint(0, 3, (n,), generator=generator)
    age = 20 + 60 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    x = torch.exp(5 + 0.1 * sex.view(-1, 1) + 0.2 * site.view(-1, 1) - 0.005 * age
                  + 0.1 * torch.randn(n, 4, generator=generator, dtype=torch.float64))
    return {"sex": sex, "site": site, "age": age, "x": x}


@pytest.mark.parametrize("architecture", ["elementwise", "autoregressive"])
def test_abduction_then_prediction_reconstructs(architecture):
    values = _toy_values()
    scm = FlowSCM(harmonization_graph(3, 4, architecture=architecture, num_layers=2),
                  context_hidden=(16,), context_features=8, hidden_features=16, num_bins=5)
    train_scm(scm, values, TrainingConfig(epochs=3, batch_size=64, learning_rate=1e-3))
    log_prob = scm.log_prob(values)
    assert all(torch.isfinite(v).all() for v in log_prob.values())
    noise = scm.abduct(values)
    again = scm.predict(noise)
    for name in ("age", "x"):
        assert torch.allclose(again[name], values[name], rtol=1e-9, atol=0)
    for name in ("sex", "site"):  # root discrete nodes: Gumbel posterior regenerates them
        assert torch.equal(again[name], values[name])


def test_counterfactual_keeps_non_descendants_and_changes_descendants():
    values = _toy_values()
    scm = FlowSCM(harmonization_graph(3, 4), context_hidden=(16,), context_features=8, num_bins=5)
    train_scm(scm, values, TrainingConfig(epochs=5, learning_rate=1e-3))
    result = scm.counterfactual(values, do={"site": 0})
    assert torch.equal(result["age"], values["age"]) and torch.equal(result["sex"], values["sex"])
    assert (result["site"] == 0).all()
    moved = values["site"] != 0
    assert not torch.allclose(result["x"][moved], values["x"][moved])
    same = scm.counterfactual(values, do={"site": values["site"]})
    assert torch.allclose(same["x"], values["x"], rtol=1e-10, atol=0)
    drawn = scm.sample(50, do={"age": 40.0}, generator=torch.Generator().manual_seed(0))
    assert drawn["x"].shape == (50, 4) and torch.all(drawn["age"] == 40.0)
    with pytest.raises(KeyError, match="unknown node"):
        scm.counterfactual(values, do={"scanner": 1})


def test_training_keeps_the_best_validation_epoch_and_logs(caplog):
    values = _toy_values(n=400)
    scm = FlowSCM(harmonization_graph(3, 4, flow="affine"), context_hidden=(16,), context_features=8)
    with caplog.at_level("INFO", logger="bidsharmony.scm.training"):
        history = train_scm(scm, values, TrainingConfig(epochs=6, learning_rate=1e-3, patience=50),
                            strata=values["site"].numpy())
    lines = [r.getMessage() for r in caplog.records if "epoch" in r.getMessage() and "left" in r.getMessage()]
    assert len(lines) == 6 and "validation NLL" in lines[0]
    # epoch 0 (the closed-form initialisation) is a candidate too
    candidates = [{"epoch": 0, "validation_nll": history["initial_validation_nll"]}, *history["epochs"]]
    best = min(candidates, key=lambda e: e["validation_nll"])
    assert history["best_epoch"] == best["epoch"]
    assert history["best_validation_nll"] == pytest.approx(best["validation_nll"])
    assert history["n_validation"] + history["n_train"] == 400
    assert 35 <= history["n_validation"] <= 45  # 10 %, stratified by site
    assert history["epochs"][-1]["learning_rate"] == pytest.approx(1e-3 * 0.01)  # decays at 50 %, 75 %


def test_mechanisms_train_separately_to_the_joint_objective():
    """The joint likelihood is a sum over mechanisms with disjoint parameters: training the
    covariates first and the features second leaves each stage's other mechanisms untouched,
    and reaches a joint validation NLL close to training everything together."""
    values = _toy_values(n=600)
    config = TrainingConfig(epochs=12, learning_rate=3e-3, seed=1)

    def build():
        torch.manual_seed(0)
        return FlowSCM(harmonization_graph(3, 4), context_hidden=(16,), context_features=8, num_bins=5)

    joint = build()
    together = train_scm(joint, values, config, strata=values["site"].numpy())
    staged = build()
    initial_features = {k: v.clone() for k, v in staged.mechanisms["x"].state_dict().items()}
    covariates = train_scm(staged, values, config, strata=values["site"].numpy(), nodes=["sex", "site", "age"])
    assert covariates["nodes"] == ["sex", "site", "age"]
    for key, value in staged.mechanisms["x"].state_dict().items():
        assert torch.equal(value, initial_features[key])  # not initialised, not trained
    frozen = {k: v.clone() for k, v in staged.mechanisms["age"].state_dict().items()}
    features = train_scm(staged, values, config, strata=values["site"].numpy(), nodes=["x"])
    for key, value in staged.mechanisms["age"].state_dict().items():
        assert torch.equal(value, frozen[key])  # the features' stage leaves the age mechanism alone
    assert list(features["per_node_nll"]) == ["sex", "site", "age", "x"]
    for node, nll in together["per_node_nll"].items():  # validation NLL per node, nats per row
        assert features["per_node_nll"][node] == pytest.approx(nll, rel=0.02), node


def test_initialisation_starts_at_each_sites_location_and_scale():
    """The closed-form start (ComBat's location-scale model): before any training, the
    counterfactual maps a site's log-features onto the reference site's mean and SD."""
    gen = torch.Generator().manual_seed(0)
    n, sd = 600, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    site = torch.arange(n) % 3
    logx = 3.0 + site.to(torch.float64).view(-1, 1) + sd[site].view(-1, 1) * torch.randn(n, 4, generator=gen,
                                                                                           dtype=torch.float64)
    values = {"sex": torch.randint(0, 2, (n,), generator=gen), "site": site,
              "age": torch.empty(n, 1, dtype=torch.float64).uniform_(20, 80, generator=gen), "x": logx.exp()}
    scm = FlowSCM(harmonization_graph(3, 4, flow="affine"), context_hidden=(8,), context_features=4)
    scm.initialise(values)
    moved = scm.counterfactual(values, do={"site": 0})["x"].log()
    for s in (1, 2):
        rows = site == s
        assert torch.allclose(moved[rows].mean(0), logx[site == 0].mean(0), atol=0.15)
        ratio = moved[rows].std(0) / logx[site == 0].std(0)
        assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio
