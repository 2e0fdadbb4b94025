"""The optimizer family: the six raw ops, tf_mps.ops.apply_{adam,sgd,rmsprop} and the
Keras classes tf_mps.keras.optimizers.{Adam,SGD,RMSProp}.

A case is a valid problem (variables of random ranks and shapes, slots, dense or sparse
gradients with NaN/Inf/denormal/huge values, hyper-parameters, gradient options, eager
or tf.function) plus, half of the time, one fault. Oracles:
* valid, raw ops and Python functions: the float64 rules of tests/reference.py, one
  step from random slots;
* valid, Keras classes: Keras's own optimizer on copies of the variables (every slot and
  `iterations` compared), or, with tf-mps-only options, the float64 rules;
* invalid: oracle.judge (the error names the argument; no variable, slot or `iterations`
  changes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from fuzz import oracle
from fuzz.registry import register

# ------------------------------------------------------------------ rules
@dataclasses.dataclass(frozen=True)
class Group:
    single: str    # the single-variable op's input name ("m")
    multi: str     # the multi-tensor op's ("ms")
    python: str    # the Python function's parameter ("ms"; RMSProp's "velocities")
    optional: bool
    init: str      # "any" or "square" (non-negative)


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    op: str                     # "ApplyAdam": MpsApplyAdam / MpsMultiApplyAdam
    groups: tuple[Group, ...]   # slot groups, in the op's order
    squares: bool               # takes grads_sq
    keras: str                  # the tf_mps.keras / keras class


VAR = Group("var", "vars", "variables", False, "any")
GRAD = Group("grad", "grads", "grads", False, "any")
RULES = {
    "adam": Rule("adam", "ApplyAdam", (Group("m", "ms", "ms", False, "any"), Group("v", "vs", "vs", False, "square"),
                                      Group("vhat", "vhats", "vhats", True, "square")), True, "Adam"),
    "sgd": Rule("sgd", "ApplySgd", (Group("momentum_slot", "momentums", "momentums", True, "any"),), False, "SGD"),
    "rmsprop": Rule("rmsprop", "ApplyRmsProp",
                    (Group("ms", "mss", "velocities", False, "square"), Group("mg", "mgs", "average_gradients", True,
                                                                               "any"),
                     Group("mom", "moms", "momentums", True, "any")), True, "RMSProp"),
}
HYPER = {  # Python parameter -> raw op input
    "adam": {"learning_rate": "lr", "step": "step", "beta_1": "beta1", "beta_2": "beta2", "epsilon": "epsilon"},
    "sgd": {"learning_rate": "lr", "momentum": "momentum"},
    "rmsprop": {"learning_rate": "lr", "rho": "rho", "momentum": "momentum", "epsilon": "epsilon"},
}
# Tolerances against the float64 rules: (rtol, atol); oracle.compare scales rtol by the
# values an update combines. float16/bfloat16 results are rounded several times.
TOL_REF = {"float64": (1e-12, 1e-300), "float32": (2e-5, 2.0**-125), "float16": (1e-2, 2.0**-13),
           "bfloat16": (6e-2, 2.0**-125)}
# Against Keras's own optimizer (the same operations in the same order).
TOL_KERAS = {"float64": (1e-12, 1e-300), "float32": (1e-6, 2.0**-125), "float16": (1e-2, 2.0**-13),
             "bfloat16": (6e-2, 2.0**-125)}
SPECIAL = {  # per dtype: (denormal, huge): huge values whose squares stay finite
    "float64": (1e-310, 1e100), "float32": (1e-40, 1e15), "float16": (1e-6, 200.0), "bfloat16": (1e-40, 1e15)}


def _slot_groups(rule: Rule, opts: dict) -> list[Group]:
    """The slot groups a problem uses (optional groups when their option is on)."""
    on = {"vhat": opts.get("amsgrad"), "momentum_slot": opts.get("use_momentum"), "mg": opts.get("centered"),
          "mom": opts.get("use_momentum")}
    return [g for g in rule.groups if not g.optional or on.get(g.single)]


# ------------------------------------------------------------------ strategies
_DIMS = st.sampled_from([0, 1, 1, 2, 3, 3, 5, 8, 17])


@st.composite
def _shape(draw, empty_huge=True):
    kind = draw(st.sampled_from(["small"] * 6 + ["chunks"] + (["empty_huge"] if empty_huge else [])))
    if kind == "chunks":  # crosses the kernels' 32K-element chunks, ragged end
        n = 32768 * draw(st.integers(1, 3)) + draw(st.sampled_from([0, 1, 7, 1000, 32767]))
        return [n] if draw(st.booleans()) else [n // 4 + 1, 4]
    if kind == "empty_huge":  # no elements, a dimension past int32
        return draw(st.permutations([0, draw(st.sampled_from([2**31, 2**40]))]))
    return draw(st.lists(_DIMS, min_size=0, max_size=3))


@st.composite
def _gradient(draw, shape, sparse_ok, duplicates_ok):
    if not sparse_ok or len(shape) == 0 or shape[0] == 0 or int(np.prod(shape)) > 200_000 or not draw(st.booleans()):
        return {"kind": "dense"}
    rows = draw(st.integers(0, min(2 * shape[0], 40)))
    return {"kind": "sparse", "rows": rows, "duplicates": duplicates_ok and draw(st.booleans())}


def _keras_equivalent(grad_opts: dict) -> bool:
    return (grad_opts["semantics"] == "keras" and grad_opts["gradient_rescale"] == 1.0
            and grad_opts["gradient_clip"] is None and grad_opts["regularization"] is None)


@st.composite
def _problem(draw, rule_name: str, form: str):
    rule = RULES[rule_name]
    n = draw(st.integers(1, 4))
    multi = True if n > 1 else draw(st.booleans())
    dtypes = ["float32", "float64"] + (["float16", "bfloat16"] if form != "raw" else [])
    dtype = draw(st.sampled_from(dtypes))
    opts = {}
    if rule_name == "adam":
        opts["amsgrad"] = draw(st.booleans())
    if rule_name in ("sgd", "rmsprop"):
        opts["use_momentum"] = draw(st.booleans())
    if rule_name == "sgd":
        opts["nesterov"] = opts["use_momentum"] and draw(st.booleans())
    if rule_name == "rmsprop":
        opts["centered"] = draw(st.booleans())
    grad_opts = dict(semantics="keras", gradient_rescale=1.0, gradient_clip=None, regularization=None,
                     regularization_scale=0.0)
    if form == "raw" or draw(st.booleans()):
        grad_opts.update(
            semantics=draw(st.sampled_from(["keras", "mps"])),
            gradient_rescale=draw(st.sampled_from([1.0, 1.0, 0.5, 3.0])),
            gradient_clip=draw(st.sampled_from([None, None, (-0.3, 0.4), (-1.0, 1.0), (0.0, 0.0)])),
            regularization=draw(st.sampled_from([None, None, "l1", "l2"])),
        )
        if grad_opts["regularization"]:
            grad_opts["regularization_scale"] = draw(st.sampled_from([0.0, 0.01, 0.5]))
    # No beta_1, beta_2 or rho of 0: Keras's m += (g - m)*(1 - beta_1) (and v's) then
    # cancels to a result far below its inputs' rounding, and w's update amplifies that
    # legitimately beyond any element-wise tolerance against the float64 rules.
    hyper = {"learning_rate": draw(st.sampled_from([0.0, 1e-3, 0.01, 0.1, 1.0, 10.0]))}
    if rule_name == "adam":
        hyper.update(step=draw(st.sampled_from([1, 1, 2, 3, 10, 1000])), beta_1=draw(st.sampled_from([0.5, 0.9])),
                     beta_2=draw(st.sampled_from([0.9, 0.999])),
                     epsilon=draw(st.sampled_from([1e-7, 1e-3, 1.0])))
    if rule_name == "sgd":
        hyper["momentum"] = draw(st.sampled_from([0.5, 0.9, 0.0])) if opts["use_momentum"] else 0.0
    if rule_name == "rmsprop":
        hyper.update(rho=draw(st.sampled_from([0.5, 0.9])), epsilon=draw(st.sampled_from([1e-7, 1e-3, 1.0])),
                     momentum=draw(st.sampled_from([0.5, 0.9])) if opts["use_momentum"] else 0.0)
    # Keras squares each slice before summing duplicates (grads_sq); the float64 rules
    # take one gradient, so duplicates are drawn only where that rule does not apply.
    duplicates_ok = rule_name == "sgd" or not _keras_equivalent(grad_opts)
    # Keras's own RMSprop fails on [0, 2**31] (BiasAdd: "Biases must be 1D"): no such
    # shapes where it is the oracle.
    shapes = [draw(_shape(empty_huge=form != "keras")) for _ in range(n)]
    grads = [draw(_gradient(s, form != "raw", duplicates_ok)) for s in shapes]
    return {
        "rule": rule_name, "form": form, "multi": multi, "dtype": dtype, "shapes": shapes, "grads": grads,
        "opts": opts, "grad_opts": grad_opts, "hyper": hyper,
        "values": draw(st.sampled_from(["normal", "special"])),
        "graph": draw(st.booleans()), "steps": 1 if form != "keras" else draw(st.sampled_from([1, 2])),
        "seed": draw(st.integers(0, 2**32 - 1)), "fault": None, "names": [],
    }


def _names(p: dict, group: Group, i: int | None) -> list[str]:
    """How a message may name `group` (entry i, or the whole list when i is None)."""
    if p["form"] == "keras":
        return ["grads", "grad", "gradient", "gradients", "grads_and_vars", "trainable_variables", "variables",
                "var_list"]
    if not p["multi"]:
        return [group.single] + ([group.python] if p["form"] == "py" else [])
    spellings = [group.multi] + ([group.python] if p["form"] == "py" else [])
    return spellings if i is None else [f"{s}[{i}]" for s in spellings]


@st.composite
def _fault(draw, p: dict):
    """Adds one mistake to problem p (in place); returns p."""
    rule = RULES[p["rule"]]
    form, n = p["form"], len(p["shapes"])
    groups = _slot_groups(rule, p["opts"])
    sparse = [i for i, g in enumerate(p["grads"]) if g["kind"] == "sparse"]
    faults = ["grad_shape"]
    if form != "keras":
        faults += ["slot_shape", "slot_dtype", "alias"] if groups else []
        faults += ["mixed_var_dtype"] if n > 1 and p["dtype"] in ("float32", "float64") else []
    if form == "py" or (form == "raw" and p["rule"] == "adam"):
        faults += ["bad_hyper"]
    if form == "py":
        faults += ["grad_dtype", "bad_option", "empty_vars"] + (["list_length"] if p["multi"] and n > 1 else [])
        faults += ["not_variable"] if groups else []
    if form == "raw":
        faults += ["grad_dtype", "dangling_handle", "non_scalar", "clip_attr", "grads_sq"]
        faults += ["optional_length"] if p["multi"] else []
    if form == "keras":
        faults += ["bad_option", "bad_keras_hyper"]
    if sparse:
        faults += ["sparse_oob", "sparse_negative", "sparse_row_shape"]
    if p["rule"] == "sgd" and form != "keras" and not p["opts"]["use_momentum"]:
        faults.append("nesterov_alone")
    fault = draw(st.sampled_from(faults))
    i = draw(st.integers(0, n - 1))
    f = {"i": i}
    names = []
    if fault == "grad_shape":
        shape = p["shapes"][i]
        f["shape"] = draw(st.sampled_from([shape + [1], shape[:-1], [s + 1 for s in shape] or [2], [2**40, 0]]))
        if f["shape"] == shape:
            f["shape"] = shape + [2]
        if int(np.prod(f["shape"], dtype=np.float64)) > 10**6:  # nothing that allocates terabytes
            f["shape"] = [2**40, 0] if shape != [2**40, 0] else [0, 2**40]
        p["grads"][i] = {"kind": "dense"}
        names = _names(p, GRAD, i)
    elif fault in ("slot_shape", "slot_dtype", "not_variable", "alias"):
        g = draw(st.sampled_from(groups))
        f["group"] = g.single
        names = _names(p, g, i)
        if fault == "slot_shape":
            f["shape"] = p["shapes"][i] + [2]
        if fault == "slot_dtype":
            f["dtype"] = {"float64": "float32"}.get(p["dtype"], "float64")
        if fault == "alias":  # the slot is one of the variables, or another slot
            f["target"] = draw(st.sampled_from(["var"] + [h.single for h in groups if h != g]))
            f["j"] = i if f["target"] != "var" else draw(st.integers(0, n - 1))
            names += _names(p, VAR, f["j"]) + (_names(p, next(h for h in groups if h.single == f["target"]), f["j"])
                                                 if f["target"] != "var" else [])
            p["shapes"] = [p["shapes"][i] if k == f["j"] else s for k, s in enumerate(p["shapes"])]
            p["grads"] = [{"kind": "dense"} if k == f["j"] else gr for k, gr in enumerate(p["grads"])]
    elif fault == "mixed_var_dtype":
        f["i"] = i = draw(st.integers(1, n - 1))
        f["dtype"] = "float64" if p["dtype"] == "float32" else "float32"
        names = _names(p, VAR, i)
    elif fault == "grad_dtype":
        f["dtype"] = draw(st.sampled_from([d for d in ["float16", "float32", "float64", "int32"] if d != p["dtype"]]))
        p["grads"][i] = {"kind": "dense"}
        names = _names(p, GRAD, i) + ([GRAD.multi] if form == "raw" else [])  # TF's own binding names the list
    elif fault == "list_length":
        g = draw(st.sampled_from(groups + [GRAD]))
        f["group"] = g.single
        names = _names(p, g, None)
    elif fault == "empty_vars":
        names = ["vars", "variables"]
    elif fault == "bad_option":
        f["option"], f["value"] = draw(st.sampled_from([
            ("gradient_clip", [1.0, 2.0, 3.0]), ("gradient_clip", (1.0,)), ("gradient_clip", 5),
            ("gradient_clip", (2.0, 1.0)), ("gradient_clip", ("a", 1.0)), ("gradient_clip", (float("nan"), 1.0)),
            ("regularization_scale", None), ("regularization_scale", "x"), ("gradient_rescale", "x"),
            ("gradient_rescale", None), ("semantics", "torch"), ("regularization", "l3"),
        ]))
        names = [f["option"]]
    elif fault == "bad_hyper":
        params = list(HYPER[p["rule"]]) if form == "py" else ["step"]
        f["param"] = draw(st.sampled_from(params))
        values = ["x", None, [0.1, 0.2]] if form == "py" else []
        if f["param"] == "step":
            values += [0, -3]
        f["value"] = draw(st.sampled_from(values))
        names = [f["param"]] if form == "py" else [HYPER[p["rule"]][f["param"]]]
    elif fault == "bad_keras_hyper":
        f["param"] = draw(st.sampled_from({"adam": ["beta_1", "beta_2", "epsilon"], "sgd": ["momentum"],
                                           "rmsprop": ["rho", "epsilon", "momentum"]}[p["rule"]]))
        f["value"] = draw(st.sampled_from(["x", None]))
        names = [f["param"]]
    elif fault == "dangling_handle":
        g = draw(st.sampled_from([VAR] + groups))
        f["group"] = g.single
        names = _names(p, g, i)
    elif fault == "non_scalar":
        f["param"] = draw(st.sampled_from(list(HYPER[p["rule"]].values())))
        names = [f["param"]]
    elif fault == "clip_attr":
        names = ["gradient_clip_min", "gradient_clip_max"]
    elif fault == "optional_length":
        opt = [g for g in rule.groups if g.optional]
        if n < 2:
            p["shapes"].append([3])
            p["grads"].append({"kind": "dense"})
            p["multi"] = True
            n = 2
        g = draw(st.sampled_from(opt))
        f["group"] = g.single
        names = [g.multi]
    elif fault == "grads_sq":
        if not rule.squares:
            fault, names = "clip_attr", ["gradient_clip_min", "gradient_clip_max"]
        else:
            f["how"] = draw(st.sampled_from(["count", "shape"]))
            gsq = Group("grad_sq", "grads_sq", "grads_sq", True, "any")
            names = _names(p, gsq, None if f["how"] == "count" else i)
            if f["how"] == "count" and not p["multi"]:
                names = ["grad_sq"]
    elif fault in ("sparse_oob", "sparse_negative", "sparse_row_shape"):
        f["i"] = i = draw(st.sampled_from(sparse))
        if p["grads"][i]["rows"] == 0:
            p["grads"][i]["rows"] = 1
        if fault == "sparse_oob":
            f["index"] = draw(st.sampled_from([0, 1, 2**40])) + p["shapes"][i][0]
        if fault == "sparse_negative":
            f["index"] = draw(st.sampled_from([-1, -2, -(2**40)]))
        if fault == "sparse_row_shape":  # same element count, wrong row shape
            row = p["shapes"][i][1:]
            f["row"] = draw(st.sampled_from([row[::-1] + [1], [int(np.prod(row, dtype=np.int64))] + [1], [1] + row]))
            if f["row"] == row:
                f["row"] = row + [1]
        names = _names(p, GRAD, i)
    elif fault == "nesterov_alone":
        names = ["nesterov", "momentums", "momentum_slot"]
    p["fault"], p["fault_args"], p["names"] = fault, f, names
    return p


def _case(entry: str, rule: str, form: str):
    def finish(p):
        return st.booleans().flatmap(lambda bad: _fault(p) if bad else st.just(p)).map(
            lambda c: {**c, "entry": entry, "klass": _klass(entry, c)})

    return _problem(rule, form).flatmap(finish)


def _klass(entry, c):
    """What known.py matches: "<entry>:<fault or valid>:<dtype>:<gradient kinds>[:graph]
    [:special][:l1|:l2]" (Keras entries may add ":mixed-<dtype>" or ":castgrad")."""
    traits = [c["fault"] or "valid", c["dtype"], "+".join(sorted({g["kind"] for g in c["grads"]}))]
    if c["graph"]:
        traits.append("graph")
    if c["values"] == "special":
        traits.append("special")
    if c["grad_opts"]["regularization"]:
        traits.append(c["grad_opts"]["regularization"])
    return entry + ":" + ":".join(traits)


# ------------------------------------------------------------------ building inputs
def _np_dtype(name):
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _values(rng, shape, dtype, special, kind="any"):
    """Random values of `shape` rounded to `dtype`, as float64 (exactly representable)."""
    x = rng.standard_normal(shape)
    if dtype == "float16":
        x = np.clip(x, -50, 50)
    if special:
        denormal, huge = SPECIAL[dtype]
        picks = np.array([np.nan, np.inf, -np.inf, denormal, -denormal, 0.0, -0.0, huge, -huge])
        mask = rng.random(shape) < 0.2
        x = np.where(mask, picks[rng.integers(0, len(picks), shape)], x)
    if kind == "square":
        x = np.abs(x)
    with np.errstate(over="ignore"):
        return x.astype(_np_dtype(dtype)).astype(np.float64)


def _build(p: dict):
    """Arrays of one problem: per variable its value, slots and gradient (float64 holding
    values of the dtype), sparse gradients as (values, indices)."""
    rng = np.random.default_rng(p["seed"])
    dtype, rule = p["dtype"], RULES[p["rule"]]
    groups = _slot_groups(rule, p["opts"])
    special = p["values"] == "special"
    items = []
    for shape, gspec in zip(p["shapes"], p["grads"], strict=True):
        it = {"w": _values(rng, shape, dtype, special), "slots": {}}
        for g in groups:
            it["slots"][g.single] = _values(rng, shape, dtype, False, g.init)
        if "mg" in it["slots"]:  # centered RMSProp: ms - mg**2 is a variance, kept >= 1
            it["slots"]["ms"] = (it["slots"]["ms"] + it["slots"]["mg"] ** 2 + 1.0).astype(_np_dtype(dtype)).astype(np.float64)
        steps = []
        for _ in range(p["steps"]):
            if gspec["kind"] == "dense":
                steps.append({"dense": _values(rng, shape, dtype, special)})
            else:
                k = gspec["rows"]
                idx = (rng.integers(0, shape[0], k) if gspec["duplicates"]
                       else rng.permutation(min(shape[0], 10**6))[:k])
                vals = _values(rng, [len(idx)] + shape[1:], dtype, special)
                dense = np.zeros(shape)
                np.add.at(dense, idx, vals)
                steps.append({"values": vals, "indices": idx.astype(np.int64), "dense": dense})
        it["steps"] = steps
        items.append(it)
    return items


def _f32(x):
    return float(np.float32(x))


def _reference(p: dict, items, flush: bool, perturb=None, native_sum=False, native=False):
    """Expected values after p["steps"] steps (float64 rules of tests/reference.py).
    flush: denormal inputs read as zero (TF runs kernels with denormals flushed);
    perturb: (rng, r): every input array multiplied by 1 + r*U(-1, 1);
    native_sum: sparse duplicates summed in the variables' dtype, in index order of the
    slices (as tf.math.unsorted_segment_sum on the CPU adds them), not in float64;
    native: the rules computed in the variables' 16-bit dtype (every operation rounded),
    where float16 underflows (g*g of 1e-4 is 0) and rounds as the kernels and Keras do."""
    import reference as ref

    dtype, h, go = p["dtype"], p["hyper"], p["grad_opts"]
    npd = _np_dtype(dtype)
    # The learning rate in the variables' dtype; Keras's optimizers keep it in a float32
    # variable first.
    lr = h["learning_rate"] if p["form"] != "keras" else _f32(h["learning_rate"])
    lr = float(np.asarray(lr).astype(npd).astype(np.float64))
    # Keras's SGD takes ops.cast(momentum, dtype): the Python float goes through float32
    # (floatx) first, also for float64 variables; Keras semantics repeats that.
    sgd_mu = _f32(h.get("momentum", 0.0)) if go["semantics"] == "keras" else h.get("momentum", 0.0)
    # Keras on 16-bit variables: every Python float it combines with a tensor (1 - beta_1,
    # epsilon, rho, ...) and every ops.cast(hyper-parameter) becomes a 16-bit value
    # (through float32, as in eager mode); bfloat16 turns beta_2 = 0.999 into 1.0.
    # The kernels round the same constants in MPS semantics too.
    const, cast = (lambda x: x), None
    if dtype in ("float16", "bfloat16"):
        const = lambda x: float(np.float32(x).astype(npd))  # noqa: E731
        cast = const
        sgd_mu = const(sgd_mu)
    clip = go["gradient_clip"]
    clip = None if clip is None else (_f32(clip[0]), _f32(clip[1]))
    tiny = np.finfo(np.float32).tiny if dtype in ("float32", "bfloat16") else np.finfo(np.float64).tiny
    fl = (lambda a: np.where(np.abs(a) < tiny, 0.0 * a, a)) if flush else (lambda a: a)
    if perturb is not None:
        rng, r = perturb
        fl = lambda a: np.asarray(a) * (1 + r * rng.uniform(-1, 1, np.shape(a)))  # noqa: E731
    if native:
        fl = lambda a: np.asarray(a).astype(npd)  # noqa: E731
    out = []
    for it in items:
        w = fl(it["w"])
        s = {k: fl(v) for k, v in it["slots"].items()}
        for t, step in enumerate(it["steps"]):
            dense = fl(step["dense"])
            if native_sum and "values" in step:
                acc = np.zeros(np.shape(step["dense"]), npd)
                with np.errstate(all="ignore"):
                    np.add.at(acc, step["indices"], step["values"].astype(npd))
                dense = fl(acc.astype(np.float64))
            elif perturb is not None and "values" in step:
                # Summing duplicate rows rounds too (in the variables' dtype, in an order of
                # the implementation's): perturb the slices, then sum. With cancelling huge
                # slices (1e15 - 1e15 + 0.5) the float32 sum is anything from 0 to 0.5; the
                # spread of the perturbed references covers that (finding F7, an oracle bug).
                dense = np.zeros(np.shape(step["dense"]))
                with np.errstate(all="ignore"):
                    np.add.at(dense, step["indices"], fl(step["values"]))
            g = ref.transform_gradient(dense, w, _f32(go["gradient_rescale"]), clip, go["regularization"],
                                       _f32(go["regularization_scale"]))
            with np.errstate(all="ignore"):
                if p["rule"] == "adam":
                    w, s["m"], s["v"], vh = ref.adam(w, s["m"], s["v"], s.get("vhat"), g, lr, h["step"] + t,
                                                    h["beta_1"], h["beta_2"], h["epsilon"], go["semantics"],
                                                    const=const, cast=cast)
                    if vh is not None:
                        s["vhat"] = vh
                elif p["rule"] == "sgd":
                    w, mom = ref.sgd(w, s.get("momentum_slot"), g, lr, sgd_mu, p["opts"]["nesterov"],
                                     go["semantics"])
                    if mom is not None:
                        s["momentum_slot"] = mom
                else:
                    w, s["ms"], a, mom = ref.rmsprop(w, s["ms"], s.get("mg"), s.get("mom"), g, lr, h["rho"],
                                                     h["momentum"], h["epsilon"], go["semantics"], const=const)
                    if a is not None:
                        s["mg"] = a
                    if mom is not None:
                        s["mom"] = mom
        out.append({"w": np.asarray(w, np.float64), "slots": {k: np.asarray(v, np.float64) for k, v in s.items()}})
    return out


def _check_against(p, items, actual, tol):
    """actual: per variable {"w": array, "slots": {...}} (the slots to compare); each
    element must match the reference computed with or without denormal flushing.

    Rounding inside an update acts like a perturbation of its inputs of about one
    rounding error (the update is backward stable), so where the update is ill
    conditioned (a moment that cancels to near zero, then divides) its result may move
    far more than rtol: the reference is also computed from inputs perturbed by rtol, and
    twice the spread is added to the tolerance of each element."""
    rtol, atol = tol[p["dtype"]]
    rng = np.random.default_rng(p["seed"] + 1)
    exact = _reference(p, items, False)
    refs = [exact, _reference(p, items, True)]
    if any(g["kind"] == "sparse" and g.get("duplicates") for g in p["grads"]):
        refs.append(_reference(p, items, False, native_sum=True))
    if p["dtype"] in ("float16", "bfloat16"):  # the rules in 16-bit arithmetic (finding O1, an oracle limit)
        refs.append(_reference(p, items, False, native_sum=True, native=True))
    perturbed = [_reference(p, items, False, (rng, rtol)) for _ in range(2)]
    refs += perturbed
    for i, (it, got) in enumerate(zip(items, actual, strict=True)):
        for key in ["w"] + list(got["slots"]):
            old = it["w"] if key == "w" else it["slots"][key]
            a = got["w"] if key == "w" else got["slots"][key]
            pick = lambda r: r[i]["w"] if key == "w" else r[i]["slots"][key]  # noqa: E731
            expected = [pick(r) for r in refs]
            with np.errstate(invalid="ignore"):
                spread = np.max([np.abs(pick(r) - expected[0]) for r in perturbed], axis=0)
            spread = np.where(np.isfinite(spread), spread, np.inf)
            problem = oracle.compare(f"variable {i} {key}", a, expected[0], also=expected[1:], old=old, rtol=rtol,
                                     atol=atol + 2 * spread)
            if problem:
                return problem
    return None


# ------------------------------------------------------------------ running: raw ops and Python functions
def _tf_dtype(name):
    import tensorflow as tf

    return getattr(tf, name)


def _grad_tensor(step, dtype, shape):
    import tensorflow as tf

    td = _tf_dtype(dtype)
    if "values" in step:
        return tf.IndexedSlices(tf.cast(tf.constant(step["values"]), td), tf.constant(step["indices"]),
                                tf.constant(shape, tf.int64))
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return tf.zeros(shape, td)
    return tf.cast(tf.constant(step["dense"]), td)


def _variable(x, dtype, shape):
    import tensorflow as tf

    if int(np.prod(shape, dtype=np.int64)) == 0:
        return tf.Variable(tf.zeros(shape, _tf_dtype(dtype)))
    return tf.Variable(tf.cast(tf.constant(x), _tf_dtype(dtype)))


def _run_ops(p: dict) -> dict:
    import tensorflow as tf

    import tf_mps

    rule, f = RULES[p["rule"]], p.get("fault_args") or {}
    fault = p["fault"]
    items = _build(p)
    groups = _slot_groups(rule, p["opts"])
    dtype = p["dtype"]
    vars_ = [_variable(it["w"], dtype, s) for it, s in zip(items, p["shapes"], strict=True)]
    slots = {g.single: [_variable(it["slots"][g.single], dtype, s) for it, s in zip(items, p["shapes"], strict=True)]
             for g in groups}
    grads = [_grad_tensor(it["steps"][0], dtype, s) for it, s in zip(items, p["shapes"], strict=True)]
    state = [(f"vars[{i}]", v) for i, v in enumerate(vars_)]
    state += [(f"{g}[{i}]", v) for g, vs in slots.items() for i, v in enumerate(vs)]
    i = f.get("i", 0)
    extra_state = []
    # -- faults that change the inputs
    if fault == "grad_shape":
        grads[i] = tf.zeros(f["shape"], _tf_dtype(dtype))
    if fault == "slot_shape":
        slots[f["group"]][i] = tf.Variable(tf.zeros(f["shape"], _tf_dtype(dtype)))
    if fault == "slot_dtype":
        slots[f["group"]][i] = tf.Variable(tf.zeros(p["shapes"][i], _tf_dtype(f["dtype"])))
    if fault == "alias":
        slots[f["group"]][i] = vars_[f["j"]] if f["target"] == "var" else slots[f["target"]][f["j"]]
    if fault == "mixed_var_dtype":
        vars_[i] = tf.Variable(tf.zeros(p["shapes"][i], _tf_dtype(f["dtype"])))
        extra_state.append(("vars[i] (other dtype)", vars_[i]))
    if fault == "grad_dtype":
        grads[i] = tf.zeros(p["shapes"][i], getattr(tf, f["dtype"]))
    if fault == "not_variable":
        slots[f["group"]][i] = tf.zeros(p["shapes"][i], _tf_dtype(dtype))
    if fault in ("sparse_oob", "sparse_negative", "sparse_row_shape"):
        g = grads[i]
        values, indices = g.values, g.indices
        if fault == "sparse_row_shape":
            values = tf.reshape(values, [-1] + f["row"])
        else:
            indices = tf.tensor_scatter_nd_update(indices, [[0]], tf.constant([f["index"]], tf.int64))
        grads[i] = tf.IndexedSlices(values, indices, g.dense_shape)
    if fault == "dangling_handle":
        target = vars_ if f["group"] == "var" else slots[f["group"]]
        target[i] = tf.raw_ops.VarHandleOp(dtype=_tf_dtype(dtype), shape=p["shapes"][i],
                                           shared_name=f"tfmps_fuzz_nothing_{p['seed']}")
    state += extra_state

    hyper = dict(p["hyper"])
    opts = {k: v for k, v in p["grad_opts"].items()}
    if fault == "bad_option":
        opts[f["option"]] = f["value"]
    if fault == "bad_hyper":
        hyper[f["param"]] = f["value"]
    if p["form"] == "py":
        call = _python_call(p, rule, groups, vars_, slots, grads, hyper, opts, f)
    else:
        call = _raw_call(p, rule, groups, vars_, slots, grads, hyper, opts, f)
    if p["graph"]:
        call = _in_function(call)

    def check(_):
        actual = [{"w": v.numpy().astype(np.float64),
                   "slots": {g: slots[g][k].numpy().astype(np.float64) for g in slots}} for k, v in enumerate(vars_)]
        return _check_against(p, items, actual, TOL_REF)

    allowed = ()
    if fault == "dangling_handle":
        allowed = (tf.errors.NotFoundError, tf.errors.FailedPreconditionError)
    if p["form"] == "raw" and fault in ("grad_dtype", "bad_hyper", "mixed_var_dtype"):
        allowed = (TypeError,)  # TF's generated op binding checks the attr T itself, naming the input
    boundary = None
    if p["form"] == "raw" and fault == "grad_dtype":
        # TF's eager runtime checks that every input of the type attribute T (the
        # gradients, the squared sums, lr) has one dtype before any kernel runs, and names
        # the first one that differs by position. Accepted only as exactly that message,
        # pointing at one of those inputs (docs/fuzzing.md, "The oracles").
        n = len(vars_)
        first = n * (1 + len(groups))
        squares = 0  # the raw call passes no grads_sq for this fault
        indices = "|".join(str(k) for k in range(first, first + n + squares + 1))
        name = ("MpsMulti" if p["multi"] else "Mps") + rule.op
        boundary = (rf"^cannot compute {name} as input #({indices})\(zero-based\) was expected to be a "
                    rf"\w+ tensor but is a \w+ tensor")
    return oracle.judge(call, fault=fault, names=p["names"], state=state, check=check, allowed=allowed,
                        boundary=boundary)


def _in_function(call):
    """call() inside a tf.function (ops return Operations, which a function cannot)."""
    import tensorflow as tf

    @tf.function
    def run():
        call()

    return run


def _python_call(p, rule, groups, vars_, slots, grads, hyper, opts, f):
    import tf_mps

    fn = {"adam": tf_mps.ops.apply_adam, "sgd": tf_mps.ops.apply_sgd, "rmsprop": tf_mps.ops.apply_rmsprop}[p["rule"]]
    multi = p["multi"]
    one = (lambda xs: list(xs)) if multi else (lambda xs: xs[0])
    kwargs = {}
    if p["fault"] == "list_length":
        target = f["group"]
    else:
        target = None
    for g in rule.groups:
        if g in groups:
            value = one(slots[g.single]) if target != g.single else slots[g.single][:-1]
        else:
            value = None
        kwargs[g.python] = value
    grad_arg = one(grads) if target != "grad" else grads[:-1]
    var_arg = one(vars_) if p["fault"] != "empty_vars" else []
    if p["rule"] == "adam":
        args = (var_arg, kwargs["ms"], kwargs["vs"], grad_arg, hyper["learning_rate"], hyper["step"])
        kw = dict(beta_1=hyper["beta_1"], beta_2=hyper["beta_2"], epsilon=hyper["epsilon"], vhats=kwargs["vhats"])
    elif p["rule"] == "sgd":
        args = (var_arg, grad_arg, hyper["learning_rate"])
        kw = dict(momentum=hyper["momentum"], momentums=kwargs["momentums"],
                  nesterov=p["opts"]["nesterov"] or p["fault"] == "nesterov_alone")
    else:
        args = (var_arg, kwargs["velocities"], grad_arg, hyper["learning_rate"])
        kw = dict(rho=hyper["rho"], momentum=hyper["momentum"], epsilon=hyper["epsilon"],
                  average_gradients=kwargs["average_gradients"], momentums=kwargs["momentums"])
    kw.update(opts)
    return lambda: fn(*args, **kw)


def _raw_call(p, rule, groups, vars_, slots, grads, hyper, opts, f):
    import tensorflow as tf

    import tf_mps

    lib = tf_mps._lib.load()
    multi, fault = p["multi"], p["fault"]
    n = len(vars_)
    dtype = _tf_dtype(p["dtype"])
    handle = lambda v: v.handle if isinstance(v, tf.Variable) else v  # noqa: E731
    inputs = {}
    for g in rule.groups:
        values = [handle(v) for v in slots[g.single]] if g in groups else []
        if fault == "optional_length" and g.single == f["group"]:
            values = [handle(v) for v in (slots.get(g.single) or vars_)][:1]
            if not values or len(values) == n:
                values = [tf.Variable(tf.zeros(p["shapes"][0], dtype)).handle]
        inputs[g.multi if multi else g.single] = values if (multi or g.optional) else values[0]
    inputs["vars" if multi else "var"] = [handle(v) for v in vars_] if multi else handle(vars_[0])
    inputs["grads" if multi else "grad"] = list(grads) if multi else grads[0]
    if rule.squares:
        sq = []
        if fault == "grads_sq":
            sq = [tf.zeros_like(g) if not isinstance(g, tf.IndexedSlices) else tf.zeros(p["shapes"][k], dtype)
                  for k, g in enumerate(grads)]
            if f["how"] == "count":
                sq = sq[:-1] if multi else sq + sq
                if not sq:
                    sq = [tf.zeros([1], dtype)] * (n + 1)
            else:
                sq[f["i"]] = tf.zeros(list(p["shapes"][f["i"]]) + [2], dtype)
            sq = sq if multi else sq
        inputs["grads_sq" if multi else "grad_sq"] = sq
    h = dict(hyper)

    def scalar(name, value, kind):
        if fault == "non_scalar" and f["param"] == name:
            return tf.constant([1, 1], kind)
        return tf.constant(value, kind)

    for py, raw in HYPER[p["rule"]].items():
        kind = dtype if raw == "lr" else tf.int64 if raw == "step" else tf.float64
        inputs[raw] = scalar(raw, h[py], kind)
    if p["rule"] == "sgd":
        inputs["nesterov"] = p["opts"]["nesterov"] or fault == "nesterov_alone"
    inputs["semantics"] = opts["semantics"]
    inputs["gradient_rescale"] = float(opts["gradient_rescale"])
    inputs["regularization"] = opts["regularization"] or "none"
    inputs["regularization_scale"] = float(opts["regularization_scale"])
    if opts["gradient_clip"] is not None:
        inputs.update(clip_gradient=True, gradient_clip_min=float(opts["gradient_clip"][0]),
                      gradient_clip_max=float(opts["gradient_clip"][1]))
    if fault == "clip_attr":
        inputs.update(clip_gradient=True, gradient_clip_min=1.0, gradient_clip_max=-1.0)
    op = getattr(lib, ("mps_multi_" if multi else "mps_") + {"adam": "apply_adam", "sgd": "apply_sgd",
                                                             "rmsprop": "apply_rms_prop"}[p["rule"]])
    return lambda: op(**inputs)


# ------------------------------------------------------------------ running: Keras classes
def _run_keras(p: dict) -> dict:
    import keras
    import tensorflow as tf

    import tf_mps

    rule, f, fault = RULES[p["rule"]], p.get("fault_args") or {}, p["fault"]
    items = _build(p)
    dtypes = [p["dtype"]] * len(items)
    if p.get("mixed"):  # every other variable of a second dtype, values representable in it
        dtypes = [p["dtype"] if k % 2 == 0 else p["mixed"] for k in range(len(items))]
        for k, it in enumerate(items):
            npd = _np_dtype(dtypes[k])
            it["w"] = it["w"].astype(npd).astype(np.float64)
            it["steps"] = [{key: (v.astype(npd).astype(np.float64) if key != "indices" else v)
                            for key, v in s.items()} for s in it["steps"]]

    if p.get("grad_dtype"):  # gradients of another dtype: the references see the values they hold
        gd = _np_dtype(p["grad_dtype"])
        for it, shape in zip(items, p["shapes"], strict=True):
            for step in it["steps"]:
                with np.errstate(all="ignore"):
                    if "values" in step:
                        step["values"] = step["values"].astype(gd).astype(np.float64)
                        step["dense"] = np.zeros(shape)
                        np.add.at(step["dense"], step["indices"], step["values"])
                    else:
                        step["dense"] = step["dense"].astype(gd).astype(np.float64)

    def make_vars():
        return [keras.Variable(np.zeros(shape, np.float32) if int(np.prod(shape, dtype=np.int64)) == 0 else it["w"],
                               dtype=dtypes[k], name=f"w{k}")
                for k, (it, shape) in enumerate(zip(items, p["shapes"], strict=True))]

    steps = [[_grad_tensor(it["steps"][t], p.get("grad_dtype") or dtypes[k], shape)
              for k, (it, shape) in enumerate(zip(items, p["shapes"], strict=True))] for t in range(p["steps"])]
    i = f.get("i", 0)
    if fault == "grad_shape":
        steps[0][i] = tf.zeros(f["shape"], _tf_dtype(dtypes[i]))
    if fault in ("sparse_oob", "sparse_negative", "sparse_row_shape"):
        g = steps[0][i]
        values, indices = g.values, g.indices
        if fault == "sparse_row_shape":
            values = tf.reshape(values, [-1] + f["row"])
        else:
            indices = tf.tensor_scatter_nd_update(indices, [[0]], tf.constant([f["index"]], tf.int64))
        steps[0][i] = tf.IndexedSlices(values, indices, g.dense_shape)

    kwargs = dict(learning_rate=p["hyper"]["learning_rate"])
    h = p["hyper"]
    if p["rule"] == "adam":
        kwargs.update(beta_1=h["beta_1"], beta_2=h["beta_2"], epsilon=h["epsilon"], amsgrad=p["opts"]["amsgrad"])
    if p["rule"] == "sgd":
        kwargs.update(momentum=h["momentum"], nesterov=p["opts"]["nesterov"])
    if p["rule"] == "rmsprop":
        kwargs.update(rho=h["rho"], momentum=h["momentum"], epsilon=h["epsilon"], centered=p["opts"]["centered"])
    fused = dict(p["grad_opts"])
    if fault == "bad_option":
        fused[f["option"]] = f["value"]
    if fault == "bad_keras_hyper":
        kwargs[f["param"]] = f["value"]

    ours_vars = make_vars()
    state = [(f"w{k}", v) for k, v in enumerate(ours_vars)]
    cls = getattr(tf_mps.keras.optimizers, rule.keras)

    def construct():
        opt = cls(**kwargs, **fused)
        opt.build(ours_vars)
        return opt

    try:
        opt = construct()
    except Exception:  # noqa: BLE001 - judged: the same construction, again
        return oracle.judge(construct, fault=fault, names=p["names"], state=state)
    state += [(f"optimizer {v.path}", v) for v in opt.variables]
    def apply(gs):
        opt.apply(gs, ours_vars)

    if p["graph"]:
        # The gradients enter the function as their components and become IndexedSlices
        # inside, as a model's gradients do: tf.function's argument tracing itself rejects
        # an IndexedSlices whose values do not fit its dense_shape ("Shapes (None, 5, 1)
        # and (3, 5) are not compatible") before any optimizer code runs.
        def parts_of(gs):
            return [(g.values, g.indices, g.dense_shape) if isinstance(g, tf.IndexedSlices) else g for g in gs]

        @tf.function
        def apply_parts(parts):
            opt.apply([tf.IndexedSlices(*x) if isinstance(x, tuple) else x for x in parts], ours_vars)

        apply = lambda gs: apply_parts(parts_of(gs))  # noqa: E731

    def call():
        for gs in steps[:1] if fault else steps:
            apply(gs)

    def check(_):
        if int(opt.iterations.numpy()) != p["steps"]:
            return f"iterations is {int(opt.iterations.numpy())}, expected {p['steps']}"
        theirs = None
        if _keras_equivalent(p["grad_opts"]):
            theirs_vars = make_vars()
            theirs = getattr(keras.optimizers, {"RMSProp": "RMSprop"}.get(rule.keras, rule.keras))(**kwargs)
            try:
                for gs in steps:
                    theirs.apply([_sorted_slices(g) for g in gs], theirs_vars)
            except Exception:  # noqa: BLE001 - Keras's own cannot run this case: the float64 rules judge it
                theirs = None
        if theirs is not None:
            pairs = [(f"variable w{k}", a, b) for k, (a, b) in enumerate(zip(ours_vars, theirs_vars, strict=True))]
            pairs += [(f"optimizer variable {a.path}", a, b)
                      for a, b in zip(opt.variables, theirs.variables, strict=True)]
            for what, a, b in pairs:
                rtol, atol = TOL_KERAS.get(str(a.dtype), (0.0, 0.0))
                problem = oracle.compare(what, np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64),
                                         rtol=rtol, atol=atol, normwise=True)
                if problem:
                    return problem
            return None
        # tf-mps-only options: the float64 rules, from Keras's zero slots at step 1.
        zero_slots = {g.single: np.zeros(s) for g in _slot_groups(rule, p["opts"]) for s in [()]}
        for it in items:
            it["slots"] = {k: np.zeros_like(it["w"]) for k in zero_slots}
        actual = [{"w": v.numpy().astype(np.float64), "slots": {}} for v in ours_vars]
        return _check_against({**p, "hyper": {**h, "step": 1}}, items, actual, TOL_REF)

    return oracle.judge(call, fault=fault, names=p["names"], state=state, check=check)


def _sorted_slices(g):
    """The same gradient with its IndexedSlices rows in index order, for Keras's own
    optimizer as the oracle. Keras 3's sparse division (RMSprop's `lr*g / sqrt(d)`,
    keras/src/backend/tensorflow/sparse.py, `indexed_slices_union_indices_and_values`)
    pairs the union of the dividend's indices and the divisor's zero/NaN positions, which
    is sorted (tf.where), with the dividend's values in their own order when the union
    adds no index: with unsorted indices and a NaN or zero in the divisor, values land on
    the wrong rows (finding F3 of tests/fuzz/FINDINGS.md, a Keras bug; tf-mps computes the
    dense equivalent, which is what Keras computes for sorted indices)."""
    import tensorflow as tf

    if not isinstance(g, tf.IndexedSlices):
        return g
    order = tf.argsort(g.indices, stable=True)
    return tf.IndexedSlices(tf.gather(g.values, order), tf.gather(g.indices, order), g.dense_shape)


@st.composite
def _keras_extras(draw, p):
    """Keras-only traits of valid cases: variables of two dtypes, or gradients of another
    dtype than their variables (Keras casts them). Compared with Keras's own optimizer."""
    p = dict(p)
    if p["fault"] is None and _keras_equivalent(p["grad_opts"]):
        trait = draw(st.sampled_from([None, None, "mixed", "castgrad"]))
        if trait == "mixed" and len(p["shapes"]) > 1:
            p["mixed"] = draw(st.sampled_from([d for d in ["float32", "float64", "float16", "bfloat16"]
                                               if d != p["dtype"]]))
            p["klass"] += ":mixed-" + p["mixed"]
        if trait == "castgrad":
            p["grad_dtype"] = "float32" if p["dtype"] != "float32" else "float64"
            p["klass"] += ":castgrad"
    return p


# ------------------------------------------------------------------ registration
for _rule in RULES:
    for _op in (f"Mps{RULES[_rule].op}", f"MpsMulti{RULES[_rule].op}"):
        _multi = "Multi" in _op

        def _raw_strategy(rule=_rule, op=_op, multi=_multi):
            entry = f"optim/raw.{op}"

            def fix(p):
                if not multi and len(p["shapes"]) > 1:
                    p = {**p, "shapes": p["shapes"][:1], "grads": p["grads"][:1]}
                return {**p, "multi": multi}

            return _problem(rule, "raw").map(fix).flatmap(
                lambda p: st.booleans().flatmap(lambda bad: _fault(p) if bad else st.just(p))).map(
                lambda c: {**c, "entry": entry, "klass": _klass(entry, c)})

        register(f"optim/raw.{_op}", "optim", _raw_strategy(), _run_ops)
    register(f"optim/ops.apply_{_rule}", "optim", _case(f"optim/ops.apply_{_rule}", _rule, "py"), _run_ops)
    register(f"optim/keras.{RULES[_rule].keras}", "optim",
             _case(f"optim/keras.{RULES[_rule].keras}", _rule, "keras").flatmap(_keras_extras), _run_keras)
