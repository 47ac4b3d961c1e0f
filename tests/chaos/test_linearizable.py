"""Hand-made histories the checker must accept and must refuse."""
import random

import pytest

from linearizable import check, check_key


def w(v, call, ret, ok=True, key="k"):
    return {"key": key, "kind": "write", "value": v, "call": call,
            "ret": ret, "ok": ok}


def d(call, ret, ok=True, key="k"):
    return {"key": key, "kind": "delete", "value": None, "call": call,
            "ret": ret, "ok": ok}


def r(v, call, ret, ok=True, key="k"):
    return {"key": key, "kind": "read", "value": v, "call": call,
            "ret": ret, "ok": ok}


def cas(v, expect, call, ret, ok=True, succeeded=True, key="k"):
    return {"key": key, "kind": "cas", "value": v, "expect": expect,
            "call": call, "ret": ret, "ok": ok, "succeeded": succeeded}


GOOD = {
    "sequential": [w("a", 0, 1), r("a", 2, 3), w("b", 4, 5), r("b", 6, 7)],
    "absent first": [r(None, 0, 1), w("a", 2, 3), r("a", 4, 5)],
    "concurrent read sees old": [w("a", 0, 1), w("b", 2, 6), r("a", 3, 4)],
    "concurrent read sees new": [w("a", 0, 1), w("b", 2, 6), r("b", 3, 4)],
    "reads order concurrent writes": [
        w("a", 0, 10), w("b", 0, 10), r("b", 11, 12), r("b", 13, 14)],
    "unknown write seen later": [
        w("a", 0, 1), w("b", 2, None, ok=None), r("a", 3, 4),
        r("b", 50, 51), r("b", 52, 53)],
    "unknown write never seen": [
        w("a", 0, 1), w("b", 2, None, ok=None), r("a", 3, 4), r("a", 9, 10)],
    "refused write": [w("a", 0, 1), w("b", 2, 3, ok=False), r("a", 4, 5)],
    "write without an answer that happened": [
        w("a", 0, 1), w("b", 2, None, ok=None), r("b", 4, 5)],
    "delete": [w("a", 0, 1), d(2, 3), r(None, 4, 5)],
    "unknown delete taken": [w("a", 0, 1), d(2, None, ok=None),
                             r(None, 7, 8)],
    "unknown delete not taken": [w("a", 0, 1), d(2, None, ok=None),
                                 r("a", 7, 8)],
    "two keys": [w("a", 0, 1), w("x", 0, 1, key="j"), r("a", 2, 3),
                 r("x", 2, 3, key="j")],
    "cas": [w("a", 0, 1), cas("b", "a", 2, 3), r("b", 4, 5)],
    "cas on an absent key": [cas("a", None, 0, 1), r("a", 2, 3)],
    "failed cas": [w("a", 0, 1), cas("b", "x", 2, 3, succeeded=False),
                   r("a", 4, 5)],
    "failed cas explained by an unanswered write": [
        w("a", 0, 1), w("b", 2, None, ok=None),
        cas("c", "a", 3, 4, succeeded=False)],
    "unanswered cas seen later": [
        w("a", 0, 1), cas("b", "a", 2, None, ok=None), r("b", 5, 6)],
    "unanswered cas explains a failed one": [
        w("a", 0, 1), cas("b", "a", 2, None, ok=None),
        cas("c", "a", 5, 6, succeeded=False)],
    "racing cas, one wins": [
        w("a", 0, 1), cas("b", "a", 2, 5), cas("c", "a", 2, 5,
                                               succeeded=False),
        r("b", 6, 7)],
    "refused cas": [w("a", 0, 1), cas("b", "a", 2, 3, ok=False),
                    r("a", 4, 5)],
    "unanswered write expected by a cas that wrote": [
        w("a", 0, 1), w("b", 2, None, ok=None), cas("c", "b", 5, 6),
        r("c", 7, 8)],
}

BAD = {
    "refused write seen": [w("a", 0, 1), w("b", 2, 3, ok=False),
                           r("b", 4, 5)],
    "stale read": [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)],
    "lost write": [w("a", 0, 1), r("a", 2, 3), w("b", 4, 5),
                   r(None, 6, 7)],
    "value nobody wrote": [w("a", 0, 1), r("z", 2, 3)],
    "order flips": [w("a", 0, 10), w("b", 0, 10), r("b", 11, 12),
                    r("a", 13, 14)],
    "read before its write": [r("a", 0, 1), w("a", 2, 3)],
    "unknown write seen before it was sent": [
        r("b", 0, 1), w("b", 2, None, ok=None)],
    "delete undone": [w("a", 0, 1), d(2, 3), r("a", 4, 5)],
    "second key bad": [w("a", 0, 1), r("a", 2, 3), w("x", 0, 1, key="j"),
                       w("y", 2, 3, key="j"), r("x", 4, 5, key="j")],
    "absent after write": [w("a", 0, 1), r(None, 2, 3)],
    "cas against the wrong value": [w("a", 0, 1),
                                    cas("b", "x", 2, 3)],
    "cas on a present key as absent": [w("a", 0, 1), cas("b", None, 2, 3)],
    "failed cas although the value matched": [
        w("a", 0, 1), cas("b", "a", 2, 3, succeeded=False), r("a", 4, 5)],
    "both racing cas won": [
        w("a", 0, 1), cas("b", "a", 2, 5), cas("c", "a", 2, 5),
        r("b", 6, 7), r("c", 8, 9)],
    "failed cas value seen": [w("a", 0, 1),
                              cas("b", "x", 2, 3, succeeded=False),
                              r("b", 4, 5)],
    "unanswered cas that could not apply seen": [
        w("a", 0, 1), cas("b", "x", 2, None, ok=None), r("b", 5, 6)],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_linearizable(name):
    ok, why = check(GOOD[name])
    assert ok is True, why


@pytest.mark.parametrize("name", sorted(BAD))
def test_not_linearizable(name):
    ok, why = check(BAD[name])
    assert ok is False, name
    assert why


def simulate(seed, clients=8, ops=3000, stale=False):
    """A history of a correct register (each operation takes effect at a
    random point between its call and its return), or, with stale=True,
    one read answered from an old value."""
    rnd = random.Random(seed)
    t = 0.0
    hist, pending = [], []
    value, versions = None, [None]
    n = 0
    while n < ops or pending:
        t += rnd.random()
        if pending and (n >= ops or rnd.random() < 0.5):
            op = pending.pop(rnd.randrange(len(pending)))
            # it takes effect now, returns a little later
            if op["kind"] == "write":
                value = op["value"]
                versions.append(value)
            elif op["kind"] == "delete":
                value = None
                versions.append(None)
            elif op["kind"] == "cas":
                op["succeeded"] = value == op["expect"]
                if op["succeeded"]:
                    value = op["value"]
                    versions.append(value)
            else:
                op["value"] = value
            op["ret"] = t + rnd.random()
            hist.append(op)
        elif n < ops and len(pending) < clients:
            kind = rnd.choice(["write", "read", "read", "delete", "cas"])
            op = {"key": "k", "kind": kind, "call": t, "ok": True,
                  "value": f"v{n}" if kind in ("write", "cas") else None}
            if kind == "cas":  # usually the value now, else an old one
                op["expect"] = (value if rnd.random() < 0.7
                                else rnd.choice(versions))
            pending.append(op)
            n += 1
    # answers were stamped later than effects: call <= effect <= ret holds
    if stale:
        reads = [o for o in hist if o["kind"] == "read"]
        for o in reads[len(reads) // 2:]:
            old = [v for v in versions if v is not None and v != o["value"]]
            if old:
                o["value"] = old[0]  # the very first value: long gone
                break
    return hist


@pytest.mark.parametrize("seed", range(5))
def test_simulated_correct_histories_pass(seed):
    ok, why = check_key(simulate(seed))
    assert ok is True, why


def test_search_that_gives_up_retries_without_failed_cas():
    """A budget too small for the search with failed compare-and-sets as
    observations, enough without them: the key is still checked."""
    h = [w("a", 0, 1)]
    t = 2
    for i in range(12):  # unanswered writes nobody read, each optional
        h.append(w(f"u{i}", t, None, ok=None))
        t += 1
    for i in range(12):
        h.append(cas(f"f{i}", "zz", t, t + 40, succeeded=False))
        t += 1
    h.append(r("a", t + 50, t + 51))  # none of the unanswered ones happened
    assert check_key(h, budget=200) == (True, None)
    h.append(r("u3", t + 60, t + 61))  # then one did, and a came back
    h.append(r("a", t + 70, t + 71))   # with nobody writing it: a violation
    ok, why = check_key(h, budget=200)
    assert ok is False, why


@pytest.mark.parametrize("seed", range(5))
def test_simulated_stale_read_is_found(seed):
    ok, why = check_key(simulate(seed, stale=True))
    assert ok is False, why
