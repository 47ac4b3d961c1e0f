"""A linearizability checker for histories of a key-value store, one
register per key (Wing & Gong's search with Lowe's memoization, as
Porcupine and Knossos do it), with the usual partitioning by key: a
history is linearizable iff the sub-history of every key is.

An operation is a dict:
    key     the key
    kind    "write", "delete", "read" or "cas"
    value   write and cas: the value written (unique per key); read: the
            value seen, None when the key was absent
    expect  cas only: the value the key must hold for the write to happen
            (None: the key must be absent)
    succeeded  cas with ok True: True when it wrote, False when the
            answer said the key did not hold `expect` (412): then it is
            an observation that the value was something else
    call    when the client sent it (seconds, monotonic)
    ret     when the answer came, or None when none came (a timeout, a
            reset connection, a 5xx): the outcome is unknown
    ok      True when the answer says it happened (for reads: the value
            is what was seen); False when the answer says it did not
            happen (a 4xx: refused before anything was proposed); None
            when there was no clear answer

A write or delete refused (ok False, with a return time) did not happen:
it is dropped, and a read of a refused write's value is a violation.
Operations with an unknown outcome are what makes checking hard. They are
reduced before the search, without changing the verdict:
  - a read without an answer has no effect: dropped;
  - a write without an answer whose value no read saw: dropped (taking it
    or not changes no read);
  - a write without an answer whose value a read saw must have happened
    before that read: it is kept, and ends at the earliest such read;
  - a delete without an answer may or may not have happened: kept, as
    optional, ending never.
  - a compare-and-set without an answer is treated as a write that needs
    the key to hold its `expect`: kept and required (ending at the
    earliest read of its value) when a read saw its value, else kept as
    optional.
A compare-and-set that failed (412) observes that the value was not its
`expect`; since such an observation can be explained by a write whose
value no read saw, in a key's history with failed compare-and-sets those
unanswered writes (and unanswered compare-and-sets) are kept as optional
instead of dropped. That can make the search much larger: when it gives
up, the key is checked again without the failed compare-and-sets, where
dropping is sound again (taking an unseen write changes no read, and a
compare-and-set expects a value a read saw, or absence).

check(history) returns (True, None) or (False, report), the report naming
the key and the operations around the point where every order failed.
"""
import math

INF = math.inf


class _Op:
    __slots__ = ("kind", "value", "expect", "call", "ret", "required",
                 "src")

    def __init__(self, kind, value, call, ret, required, src, expect=None):
        self.kind = kind
        self.value = value
        self.expect = expect
        self.call = call
        self.ret = ret
        self.required = required
        self.src = src


def _refused(o):
    return o.get("ok") is False and o.get("ret") is not None


def _reduce(ops, observe_failed_cas=True):
    """The operations of one key, reduced as the module says; or a report
    string when a read saw a value no write wrote. Without
    observe_failed_cas, failed compare-and-sets are left out (a weaker
    check, and a much smaller search: unanswered writes no read saw can
    then be dropped again)."""
    written = {}
    values = set()
    cas_failed = False
    for o in ops:
        if o["kind"] in ("write", "cas"):
            if o["value"] in values:
                return None, f"value {o['value']!r} written twice"
            values.add(o["value"])
            if _refused(o):
                continue
            if o["kind"] == "cas" and o.get("ok") and o.get("ret") is not None \
                    and not o.get("succeeded"):
                cas_failed = observe_failed_cas  # an observation, or none
                continue
            written[o["value"]] = o
    seen_by = {}
    out = []
    for o in ops:
        if o["kind"] != "read":
            continue
        if not o.get("ok") or o.get("ret") is None:
            continue
        v = o["value"]
        if v is not None and v not in written:
            return None, f"read {o} saw a value nobody wrote"
        if v is not None:
            seen_by[v] = min(seen_by.get(v, INF), o["ret"])
        out.append(_Op("read", v, o["call"], o["ret"], True, o))
    for o in ops:  # a compare-and-set that wrote saw its expected value
        if o["kind"] == "cas" and o.get("ok") and o.get("succeeded") and \
                o.get("ret") is not None and o.get("expect") is not None:
            e = o["expect"]
            seen_by[e] = min(seen_by.get(e, INF), o["ret"])
    for o in ops:
        known = bool(o.get("ok")) and o.get("ret") is not None
        if _refused(o):
            continue
        if o["kind"] in ("write", "cas"):
            kind, expect = o["kind"], o.get("expect")
            if kind == "cas" and known and not o.get("succeeded"):
                if observe_failed_cas:
                    out.append(_Op("casfail", None, o["call"], o["ret"], True,
                                   o, expect))
            elif known:
                out.append(_Op(kind, o["value"], o["call"], o["ret"], True, o,
                               expect))
            elif o["value"] in seen_by:
                out.append(_Op(kind, o["value"], o["call"],
                               seen_by[o["value"]], True, o, expect))
            elif cas_failed:
                out.append(_Op(kind, o["value"], o["call"], INF, False, o,
                               expect))
        elif o["kind"] == "delete":
            if known:
                out.append(_Op("delete", None, o["call"], o["ret"], True, o))
            else:
                out.append(_Op("delete", None, o["call"], INF, False, o))
    out.sort(key=lambda x: (x.call, x.ret))
    return out, None


def _step(state, op):
    if op.kind == "write":
        return True, op.value
    if op.kind == "cas":
        return state == op.expect, op.value
    if op.kind == "casfail":
        return state != op.expect, state
    if op.kind == "delete":
        return True, None
    return op.value == state, state


def check_key(ops, init=None, budget=5_000_000):
    """(True, None), (False, report) or (None, report) when the search
    gave up after `budget` steps. When the search with failed
    compare-and-sets as observations gives up, it is run again without
    them (the report then says so if that one gives up too)."""
    ok, why = _check_key(ops, init, budget, True)
    if ok is None and any(o["kind"] == "cas" for o in ops):
        ok, why2 = _check_key(ops, init, budget, False)
        if ok is None:
            why = f"{why}; without failed compare-and-sets: {why2}"
        else:
            why = why2
    return ok, why


def _check_key(ops, init, budget, observe_failed_cas):
    reduced, why = _reduce(ops, observe_failed_cas)
    if reduced is None:
        return False, why
    n = len(reduced)
    if n == 0:
        return True, None
    # Lowe's list of the operations not yet linearized, in call order.
    END = n
    HEAD = n + 1
    nxt = list(range(1, n + 1)) + [END, 0]
    prv = [HEAD] + list(range(0, n - 1)) + [END, END]
    required_left = sum(1 for o in reduced if o.required)

    def frontier():
        """Operations that may come next: called before every operation
        still pending has returned."""
        cands = []
        min_ret = INF
        i = nxt[HEAD]
        while i != END and reduced[i].call < min_ret:
            cands.append(i)
            if reduced[i].required and reduced[i].ret < min_ret:
                min_ret = reduced[i].ret
            i = nxt[i]
        return cands

    def unlink(i):
        nxt[prv[i]] = nxt[i]
        prv[nxt[i]] = prv[i]

    def relink(i):
        nxt[prv[i]] = i
        prv[nxt[i]] = i

    seen = set()
    mask = 0
    state = init
    # frames: [candidates, next candidate to try, state before, op taken]
    stack = [[frontier(), 0, state, None]]
    best = 0
    stuck = (init, [reduced[j].src for j in stack[0][0]])
    steps = 0
    while stack:
        if required_left == 0:
            return True, None
        steps += 1
        if steps > budget:
            return None, f"gave up after {budget} steps ({n} operations)"
        frame = stack[-1]
        cands, k = frame[0], frame[1]
        advanced = False
        while k < len(cands):
            i = cands[k]
            k += 1
            ok, new_state = _step(state, reduced[i])
            if not ok:
                continue
            m = mask | (1 << i)
            if (m, new_state) in seen:
                continue
            seen.add((m, new_state))
            frame[1] = k
            unlink(i)
            mask = m
            if reduced[i].required:
                required_left -= 1
            stack.append([None, 0, state, i])
            state = new_state
            stack[-1][0] = frontier()
            if len(stack) - 1 > best:
                best = len(stack) - 1
                stuck = (state, [reduced[j].src for j in stack[-1][0]])
            advanced = True
            break
        if advanced:
            continue
        # every candidate failed: undo the operation that led here
        done = stack.pop()
        i = done[3]
        if i is None:
            break
        state = done[2]
        relink(i)
        mask &= ~(1 << i)
        if reduced[i].required:
            required_left += 1
    # not linearizable: describe where the longest order stopped
    state, cands = stuck
    return False, (f"{n} operations, at most {best} could be put in an "
                   f"order; there the value was {state!r} and none of "
                   f"these could come next: {cands[:8]}")


def check(history, budget=5_000_000):
    """Checks every key; returns (ok, report) as check_key, stopping at
    the first key that is not linearizable."""
    by_key = {}
    for o in history:
        by_key.setdefault(o["key"], []).append(o)
    unknown = None
    for key in sorted(by_key):
        ok, why = check_key(by_key[key], budget=budget)
        if ok is False:
            return False, f"key {key!r}: {why}"
        if ok is None:
            unknown = f"key {key!r}: {why}"
    if unknown:
        return None, unknown
    return True, None
