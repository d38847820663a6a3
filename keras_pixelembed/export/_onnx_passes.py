"""Passes over the ONNX graph that tf2onnx writes, before the file is saved."""

from __future__ import annotations


def _subgraphs(node):
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.name, attribute.g
        for graph in attribute.graphs:
            yield attribute.name, graph


def scalar_loop_counters(graph) -> None:
    """Declares the iteration count and condition of every ONNX `Loop` body scalar: tf2onnx
    leaves them without a shape, and ONNX Runtime refuses to run a Loop whose body holds an `If`
    (the seed clustering's windowed step) unless they have one."""
    for node in graph.node:
        for name, sub in _subgraphs(node):
            if node.op_type == "Loop" and name == "body":
                for value in sub.input[:2]:
                    value.type.tensor_type.shape.ClearField("dim")
                    value.type.tensor_type.shape.SetInParent()
            scalar_loop_counters(sub)


def _cast_of(name: str, producers: dict, negated: bool):
    """The bool tensor `c` when `name` is `Cast(c)` (`Cast(Not(c))` when `negated`), else None."""
    cast = producers.get(name)
    if cast is None or cast.op_type != "Cast" or cast.domain not in ("", "ai.onnx"):
        return None
    if not negated:
        return cast.input[0]
    inner = producers.get(cast.input[0])
    return inner.input[0] if inner is not None and inner.op_type == "Not" else None


def _select_parts(node, producers: dict):
    """`(c, x, y)` when `node` is tf2onnx's select `Add(Mul(Cast(c), x), Mul(y, Cast(Not(c))))`
    (operands of each product in either order, the products too), else None."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    muls = [producers.get(name) for name in node.input]
    if any(mul is None or mul.op_type != "Mul" or len(mul.input) != 2 for mul in muls):
        return None
    for true_mul, false_mul in (muls, muls[::-1]):
        for i in (0, 1):
            c = _cast_of(true_mul.input[i], producers, negated=False)
            if c is None:
                continue
            for j in (0, 1):
                if _cast_of(false_mul.input[j], producers, negated=True) == c:
                    return c, true_mul.input[1 - i], false_mul.input[1 - j]
    return None


def _selects(graph) -> int:
    count = 0
    for node in graph.node:
        for _, sub in _subgraphs(node):
            count += _selects(sub)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        parts = _select_parts(node, producers)
        if parts is not None:
            node.op_type = "Where"
            del node.input[:]
            node.input.extend(parts)
            count += 1
    return count


def _used(graph, names: set) -> None:
    for node in graph.node:
        names.update(node.input)
        for _, sub in _subgraphs(node):
            _used(sub, names)
    names.update(value.name for value in graph.output)


def _prune(graph, used: set) -> int:
    removed = 0
    for node in graph.node:
        for _, sub in _subgraphs(node):
            removed += _prune(sub, used)
    dead = [node for node in graph.node if not any(out in used for out in node.output)]
    for node in dead:
        graph.node.remove(node)
    gone = {out for node in dead for out in node.output}
    for value in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(value)
    return removed + len(dead)


def selects_as_where(graph) -> int:
    """Rewrites tf2onnx's lowering of each select, `Cast(c) * x + y * Cast(Not(c))` (five nodes,
    and NaN where `x` or `y` is infinite), into one `Where(c, x, y)`, in the graph and every
    subgraph, then drops the nodes nothing reads any more. The same values for finite operands.
    Returns the number of selects rewritten."""
    count = _selects(graph)
    while count:
        used: set = set()
        _used(graph, used)
        if not _prune(graph, used):
            break
    return count
