"""The load generator's pure logic: arrivals, popularity, payloads, stats
merging, the knee, the config's shares. Seeded, so every check is exact."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import orjson
import pytest

from loadgen.arrivals import offsets
from loadgen.clients import check_protocol
from loadgen.clients.base import Reply
from loadgen.clients.grpc_client import grpc_template
from loadgen.clients.rest_binary import binary_template
from loadgen.clients.rest_json import json_template
from loadgen.config import LoadConfig
from loadgen.engine import Snapshot
from loadgen.histogram import LatencyHistogram
from loadgen.payloads import PayloadSource, batch_rows, random_request, random_values, row_bytes, varied_count
from loadgen.popularity import ModelPicker, Popularity
from loadgen.stats import RunStats, merge_all
from loadgen.sweep import find_knee, parse_rates
from loadgen.target import ModelSpec, index_names
from protocol.grpc_codec import decode_grpc_request
from protocol.json_codec import decode_binary_request, decode_infer_request, encode_infer_request
from protocol.types import InferRequest, Tensor, TensorSpec

# --- arrivals -------------------------------------------------------------------------------


def ks_exponential(gaps: list[float], rate: float) -> float:
    """Kolmogorov-Smirnov statistic of ``gaps`` against Exp(rate)."""
    xs = sorted(gaps)
    n = len(xs)
    d = 0.0
    for i, x in enumerate(xs):
        cdf = 1.0 - math.exp(-rate * x)
        d = max(d, (i + 1) / n - cdf, cdf - i / n)
    return d


def ks_critical(n: int) -> float:
    return 1.628 / math.sqrt(n)  # alpha = 0.01, large n (Kolmogorov's distribution)


def gaps_of(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise([0.0, *times])]


def take(kind: str, rate: float, seed: int, n: int, phase: float = 0.0) -> list[float]:
    return list(itertools.islice(offsets(kind, rate, seed, phase), n))


def test_poisson_inter_arrivals_pass_ks_against_the_exponential() -> None:
    n = 5000
    for seed in (0, 1, 2):
        gaps = gaps_of(take("poisson", 250.0, seed, n))
        assert ks_exponential(gaps, 250.0) < ks_critical(n)
        assert sum(gaps) / n == pytest.approx(1 / 250.0, rel=0.05)


def test_the_ks_check_rejects_what_is_not_poisson_at_that_rate() -> None:
    n = 5000
    poisson = gaps_of(take("poisson", 250.0, 0, n))
    assert ks_exponential(poisson, 300.0) > ks_critical(n)  # the right shape at the wrong rate
    constant = gaps_of(take("constant", 250.0, 0, n))
    assert ks_exponential(constant, 250.0) > ks_critical(n)


def test_arrivals_are_seeded() -> None:
    assert take("poisson", 100.0, 7, 50) == take("poisson", 100.0, 7, 50)
    assert take("poisson", 100.0, 7, 50) != take("poisson", 100.0, 8, 50)


def test_constant_arrivals_are_evenly_spaced() -> None:
    assert take("constant", 4.0, 0, 4) == [0.0, 0.25, 0.5, 0.75]


def test_process_shares_add_up_to_the_whole_stream() -> None:
    config = LoadConfig(rate=300.0, processes=3, seed=5)
    shares = [config.share(i) for i in range(3)]
    assert [s.rate for s in shares] == [100.0] * 3
    assert len({s.seed for s in shares}) == 3
    # constant: the three phased streams interleave into one even stream at the full rate
    merged = sorted(t for s in shares for t in take("constant", s.rate, s.seed, 100, s.phase))
    assert merged[:300] == pytest.approx([i / 300.0 for i in range(300)])
    # poisson: independent streams superpose into a Poisson stream at the full rate
    horizon = 20.0
    times = sorted(
        t for s in shares for t in itertools.takewhile(lambda t: t < horizon, offsets("poisson", s.rate, s.seed))
    )
    assert ks_exponential(gaps_of(times), 300.0) < ks_critical(len(times))


def test_shares_split_concurrency_and_the_outstanding_cap() -> None:
    config = LoadConfig(concurrency=10, processes=3, max_outstanding=90)
    assert sorted(config.share(i).concurrency for i in range(3)) == [3, 3, 4]
    assert {config.share(i).max_outstanding for i in range(3)} == {30}


# --- popularity -----------------------------------------------------------------------------

CHI2_CRITICAL_DF9_P001 = 27.877


def chi_square(observed: list[int], probabilities: list[float]) -> float:
    total = sum(observed)
    return sum((o - total * p) ** 2 / (total * p) for o, p in zip(observed, probabilities, strict=True))


def draw(popularity: Popularity, n_models: int, draws: int, seed: int = 0) -> list[int]:
    picker = ModelPicker([f"m{i}" for i in range(n_models)], popularity, random.Random(seed))
    counts = [0] * n_models
    for _ in range(draws):
        counts[picker.pick()] += 1
    return counts


def test_zipf_sampling_matches_its_distribution() -> None:
    zipf = Popularity.parse("zipf:1.1")
    expected = [1 / k**1.1 for k in range(1, 11)]
    assert zipf.weights(10) == pytest.approx([w / sum(expected) for w in expected])
    counts = draw(zipf, 10, 20_000)
    assert chi_square(counts, zipf.weights(10)) < CHI2_CRITICAL_DF9_P001
    # the same check refuses the same draws as uniform, and uniform draws as zipf
    assert chi_square(counts, Popularity().weights(10)) > CHI2_CRITICAL_DF9_P001
    assert chi_square(draw(Popularity(), 10, 20_000), zipf.weights(10)) > CHI2_CRITICAL_DF9_P001
    assert chi_square(draw(Popularity(), 10, 20_000), Popularity().weights(10)) < CHI2_CRITICAL_DF9_P001


def test_popularity_parsing() -> None:
    assert Popularity.parse("uniform") == Popularity()
    assert Popularity.parse("zipf:1.1") == Popularity("zipf", 1.1)
    assert str(Popularity.parse("zipf:0.8")) == "zipf:0.8"
    for bad in ("zipf:x", "zipf:-1", "pareto", "uniform:2"):
        with pytest.raises(ValueError):
            Popularity.parse(bad)


def test_one_model_always_gets_picked() -> None:
    assert draw(Popularity.parse("zipf:2"), 1, 100) == [100]


# --- payloads -------------------------------------------------------------------------------

MLP = ModelSpec("mlp", (TensorSpec("input", "FP32", (-1, 64)),), max_batch_size=64)
TEXT = ModelSpec("text", (TensorSpec("input_ids", "INT64", (-1, 32)),), max_batch_size=8)
ODD = ModelSpec(
    "odd",
    (
        TensorSpec("flags", "BOOL", (3,)),
        TensorSpec("half", "FP16", (2, -1)),
        TensorSpec("big", "UINT64", (2,)),
        TensorSpec("words", "BYTES", (2,)),
    ),
)


def test_batch_rows_follow_the_payload_size_within_the_batch_limit() -> None:
    assert row_bytes(MLP) == 256
    assert batch_rows(MLP, 0) == 1
    assert batch_rows(MLP, 4096) == 16
    assert batch_rows(MLP, 4000) == 16  # the closest row count
    assert batch_rows(MLP, 1 << 30) == 64
    assert batch_rows(ODD, 1 << 20) == 1  # unbatched
    assert batch_rows(TEXT, 100 * 32 * 8) == 8


def test_varied_values_carry_enough_random_bits() -> None:
    assert varied_count("FP32", 1000) == 3
    assert varied_count("INT64", 1000) == 8
    assert varied_count("BOOL", 1000) == 64
    assert varied_count("BOOL", 3) == 3  # no more than there are


@pytest.mark.parametrize("spec", [MLP, TEXT, ODD], ids=lambda s: s.name)
def test_a_rendered_template_is_the_encoded_request(spec: ModelSpec) -> None:
    rng = np.random.default_rng(1)
    request = random_request(spec, batch_rows(spec, 2048), rng)
    first = request.inputs[0]
    varied = varied_count(first.datatype, first.data.size)
    template = json_template(spec.name, request, varied)
    fresh = random_request(spec, batch_rows(spec, 2048), rng).inputs[0].data.reshape(-1)[:varied]
    first.data.reshape(-1)[:varied] = fresh
    body = template.render(fresh).body
    assert body == encode_infer_request(request)
    decoded = decode_infer_request(body)  # what a server parses: names, shapes, datatypes as declared
    for sent, spec_in in zip(decoded.inputs, spec.inputs, strict=True):
        assert (sent.name, sent.datatype) == (spec_in.name, spec_in.datatype)
        assert all(d == s or s == -1 for d, s in zip(sent.shape, spec_in.shape, strict=True))


def test_requests_are_unique_unless_repeated() -> None:
    specs = [MLP, TEXT]
    picker = ModelPicker([s.name for s in specs], Popularity(), random.Random(0))
    source = PayloadSource(specs, picker, json_template, payload_size=1024, repeat=0.0, seed=3)
    bodies = [source.next().body for _ in range(2000)]
    assert len(set(bodies)) == 2000
    first = orjson.loads(bodies[0])["inputs"][0]
    assert first["shape"][0] in (4, 8)  # 1024 bytes: 4 rows of 64 floats, or 8 rows of 32 ids (the limit)


def test_repeats_resend_earlier_bodies_byte_for_byte() -> None:
    picker = ModelPicker(["mlp"], Popularity(), random.Random(0))
    source = PayloadSource([MLP], picker, json_template, payload_size=0, repeat=0.5, seed=3)
    seen: set[bytes] = set()
    repeated = 0
    for _ in range(2000):
        body = source.next().body
        repeated += body in seen
        seen.add(body)
    assert repeated == source.repeats
    assert 900 < repeated < 1100


def test_payloads_are_seeded() -> None:
    def bodies(seed: int) -> list[bytes]:
        picker = ModelPicker(["mlp", "text"], Popularity.parse("zipf:1"), random.Random(seed))
        source = PayloadSource([MLP, TEXT], picker, json_template, 0, 0.3, seed)
        return [source.next().body for _ in range(50)]

    assert bodies(1) == bodies(1)
    assert bodies(1) != bodies(2)


def test_index_names_skip_unavailable_models() -> None:
    rows = [
        {"name": "b", "version": "1", "state": "READY"},
        {"name": "a", "version": "1", "state": "LOADING"},
        {"name": "a", "version": "2", "state": "READY"},
        {"name": "broken", "version": "1", "state": "UNAVAILABLE"},
    ]
    assert index_names(rows) == ["a", "b"]


# --- stats, report parts --------------------------------------------------------------------


def _fill(stats: RunStats, seed: int, n: int) -> None:
    rng = random.Random(seed)
    for i in range(n):
        at = rng.uniform(0, 3)
        model = rng.choice(["m1", "m2"])
        outcome = rng.random()
        if outcome < 0.1:
            stats.drop(model, at)
        elif outcome < 0.2:
            stats.record(model, at, at + 0.001, at + 1.0, None, "timeout")
        else:
            status = 503 if outcome < 0.25 else 200
            reply = Reply(status, rng.choice(["hit", "miss"]), f"w{i % 2}", rng.choice(["cpu", "disk"]))
            stats.record(model, at, at + 0.0005, at + rng.expovariate(100), reply, "")
    stats.requests_total += n


def test_counts_add_up() -> None:
    stats = RunStats()
    _fill(stats, 0, 1000)
    assert stats.offered == 1000 == stats.ok + stats.errors + stats.dropped
    assert stats.sent == stats.ok + stats.errors
    assert sum(stats.errors_by_kind.values()) == stats.errors
    assert set(stats.errors_by_kind) == {"timeout", "http_503"}
    assert sum(s.offered for s in stats.seconds.values()) == 1000
    assert sum(s.completed for s in stats.seconds.values()) == stats.sent
    assert stats.latency.count == stats.ok


def test_merging_processes_equals_recording_in_one() -> None:
    a, b, both = RunStats(), RunStats(), RunStats()
    _fill(a, 1, 700)
    _fill(b, 2, 500)
    _fill(both, 1, 700)
    _fill(both, 2, 500)
    merged = merge_all([RunStats.from_wire(a.to_wire()), RunStats.from_wire(b.to_wire())])
    assert merged.to_wire() | {"generator": None} == both.to_wire() | {"generator": None}
    assert merged.processes == 2
    for p in (50.0, 99.0, 99.9):
        assert merged.latency.percentile(p) == both.latency.percentile(p)
    assert a.offered == 700  # merging left its inputs alone


def test_histogram_clamps_and_round_trips() -> None:
    hist = LatencyHistogram()
    for seconds in (0.0, 0.000_5, 0.25, 1e9):
        hist.record(seconds)
    assert hist.count == 4
    assert hist.max() == pytest.approx(3600, rel=1e-3)
    assert hist.min() == pytest.approx(1e-6, rel=1e-3)
    again = LatencyHistogram.decode(hist.encode())
    assert again.count == 4 and again.percentile(75) == hist.percentile(75)
    assert LatencyHistogram.decode("").count == 0
    cdf = hist.cdf(10)
    assert len(cdf) == 100 + 30 + 1
    assert cdf[0][1] == 0.0 and cdf[-1] == (hist.max(), 1.0)
    assert [f for _, f in cdf] == sorted(f for _, f in cdf)
    assert [v for v, _ in cdf] == sorted(v for v, _ in cdf)


def test_snapshots_combine() -> None:
    a = Snapshot(1.0, 5.0, False, 10, 8, 1, 1, 2, 0.5, 4, 0.001, 0.010)
    b = Snapshot(1.1, 5.0, True, 20, 15, 2, 3, 1, 0.5, 12, 0.003, 0.004)
    c = Snapshot.combine([a, b])
    assert (c.sent, c.ok, c.errors, c.dropped, c.outstanding, c.answered) == (30, 23, 3, 4, 3, 16)
    assert c.p99 == 0.010 and c.p50 == pytest.approx(0.0025) and c.warming
    assert c.rate == 32.0


# --- sweep, config, protocols ---------------------------------------------------------------


def test_knee_where_achieved_falls_short() -> None:
    knee = find_knee([100, 200, 400, 800], [100, 199, 330, 340], [5, 5, 6, 7])
    assert knee is not None and knee.rate == 400 and knee.last_good == 200
    assert "achieved" in knee.reason


def test_knee_where_p99_rises_sharply() -> None:
    knee = find_knee([100, 200, 400, 800], [100, 200, 400, 800], [5.0, 4.0, 9.0, 40.0])
    assert knee is not None and knee.rate == 800 and "p99" in knee.reason


def test_no_knee_when_every_rate_is_kept_up() -> None:
    assert find_knee([100, 200], [100, 200], [5, 6]) is None
    assert parse_rates("400, 100,200") == [100.0, 200.0, 400.0]
    with pytest.raises(ValueError):
        parse_rates("100,fast")


def test_config_refuses_nonsense() -> None:
    for bad in (
        {"rate": 0},
        {"duration": 0},
        {"repeat": 1.5},
        {"arrivals": "bursty"},
        {"popularity": "zipf:x"},
        {"protocol": "soap"},
        {"url": "localhost:8000"},
        {"max_outstanding": 0},
        {"concurrency": 2, "processes": 3},
        {"url": "grpc://127.0.0.1:8001"},  # a gRPC address for a REST protocol
        {"protocol": "grpc"},  # and the other way round
    ):
        with pytest.raises(ValueError):
            LoadConfig(**bad)
    assert LoadConfig(rate=0, concurrency=4).closed_loop


def test_every_protocol_is_known_and_others_fail_clearly() -> None:
    for name in ("rest-json", "rest-binary", "grpc"):
        check_protocol(name)
    with pytest.raises(ValueError, match="unknown protocol"):
        check_protocol("soap")


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BYTES", "BOOL"])
def test_binary_and_grpc_templates_render_the_request_they_stand_for(datatype: str) -> None:
    """A rendered request decodes to the template's tensors with the fresh values first."""
    rng = np.random.default_rng(0)
    data = random_values(datatype, 12, rng).reshape(2, 6)
    request = InferRequest([Tensor("a", datatype, (2, 6), data), Tensor("b", "FP32", (1,), np.ones(1, np.float32))])
    fresh = random_values(datatype, 3, rng)
    expected = data.reshape(-1).copy()
    expected[:3] = fresh
    binary = binary_template("m", request, 3).render(fresh)
    decoded = decode_binary_request((binary.body, int(binary.headers["Inference-Header-Content-Length"])))
    via_grpc = decode_grpc_request(grpc_template("m", request, 3).render(fresh).body)
    for got in (decoded, via_grpc):
        assert np.array_equal(got.inputs[0].data.reshape(-1), expected)
        assert np.array_equal(got.inputs[1].data, np.ones(1, np.float32))


def test_seeds_are_fresh_unless_given() -> None:
    assert LoadConfig().seed != LoadConfig().seed  # drawn per run: unique bodies across runs too
    config = LoadConfig(seed=9)
    assert config.seed == 9
    assert len({config.derived_seed(i) for i in range(100)} | {config.seed}) == 101
