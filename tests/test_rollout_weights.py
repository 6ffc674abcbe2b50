"""Weight-transfer pieces that need no engine: checksums, numpy round trips (bf16 too), shape checks, buckets."""

from __future__ import annotations

import pytest
import torch

from hyrl.rollout.weights import (
    ObjectStoreTransport,
    WeightHandle,
    _from_numpy,
    _to_numpy,
    checksum,
    plan_buckets,
    validate,
)


def test_numpy_roundtrip_keeps_bits_and_dtype() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        t = torch.randn(3, 5).to(dtype)
        back = _from_numpy(_to_numpy(t), str(dtype))
        assert back.dtype == dtype and torch.equal(back, t)


def test_checksum_sees_values_names_and_order() -> None:
    a, b = torch.randn(4), torch.randn(2, 2)
    base = checksum([("a", a), ("b", b)])
    assert base == checksum([("a", a.clone()), ("b", b.clone())])
    nudged = a.clone()
    nudged[0] = torch.nextafter(nudged[0], torch.tensor(1e9))
    assert base != checksum([("a", nudged), ("b", b)])
    assert base != checksum([("b", b), ("a", a)]) and base != checksum([("x", a), ("b", b)])


def test_receive_from_handle_without_ray() -> None:
    """An object-store handle whose ``ref`` is already resolved yields the same tensors in the published order."""
    named = [("w", torch.randn(2, 3)), ("h", torch.randn(4).to(torch.bfloat16))]
    handle = WeightHandle(version=1, checksum=checksum(named), shapes={n: tuple(t.shape) for n, t in named},
                          dtypes={n: str(t.dtype) for n, t in named}, ref={n: _to_numpy(t) for n, t in named})
    got = list(ObjectStoreTransport().receive(handle))
    assert [n for n, _ in got] == ["w", "h"] and checksum(got) == handle.checksum


def test_validate_names_every_bad_parameter() -> None:
    expected = {"a.weight": (4, 2), "b.weight": (3,)}
    assert validate({"a.weight": (4, 2)}, expected) == []
    errors = validate({"a.weight": (2, 4), "c.weight": (1,)}, expected)
    assert any("a.weight" in e and "[2, 4]" in e for e in errors) and any("c.weight" in e for e in errors)
    assert validate({"anything": (1,)}, None) == []


def test_buckets_respect_the_byte_budget_and_order() -> None:
    shapes = {"a": (10,), "b": (10,), "c": (100,), "d": (5,)}
    dtypes = dict.fromkeys(shapes, "torch.float32")
    buckets = plan_buckets(shapes, dtypes, bucket_bytes=80)
    assert buckets == [["a", "b"], ["c"], ["d"]]
    assert [n for b in buckets for n in b] == list(shapes)


@pytest.mark.ray
def test_object_store_streams_in_buckets(ray_cluster, monkeypatch) -> None:
    """Each bucket goes into the object store as soon as it is full, before the learner's iterator yields the next
    tensor (so the learner never holds more than a bucket of host copies); received in order, same checksum."""
    import ray

    named = [(f"w{i}", torch.randn(64, 16)) for i in range(5)] + [("h", torch.randn(8).to(torch.bfloat16))]
    events: list[str] = []
    put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: (events.append("put:" + ",".join(value)), put(value, **kw))[1])

    def lazily():
        for name, t in named:
            events.append(name)
            yield name, t

    handle = ObjectStoreTransport(bucket_bytes=2 * 64 * 16 * 4).publish(lazily(), version=3)
    assert events == ["w0", "w1", "w2", "put:w0,w1", "w3", "w4", "put:w2,w3", "h", "put:w4,h"]
    assert len(handle.ref) == 3 and handle.buckets[0] == ["w0", "w1"]
    got = list(ObjectStoreTransport().receive(handle))
    assert [n for n, _ in got] == [n for n, _ in named] and checksum(got) == checksum(named) == handle.checksum
