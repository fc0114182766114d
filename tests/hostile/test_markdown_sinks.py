"""Every string that reaches Streamlit's markdown from the pages is escaped (issue 23).

``st.html`` takes only the app's own constant text (HTML is not markdown: ``md`` would not
escape it).

A static walk of ``pages/`` and ``ui/``: every call that renders markdown (``st.error``,
``.warning``, ``.info``, ``.success``, ``.toast``, ``.markdown``, ``.caption``, ``.write``,
``.title``, ``.header``, ``.subheader``, ``.expander``) on any container, and every function
declared to return :class:`ui.common.Markdown`, must get its text from

- a string literal (the app's own words), or
- the one helper, :func:`ui.common.md` (``md("The link sets {value!c}", value=raw)``: every
  value escaped unless it is a number or already Markdown), or the escapes it builds on
  (``md_escape``, ``md_code``, ``error_line``), or ``Markdown("literal")``, or
- an f-string whose every value is one of those calls or a number formatted with a numeric
  spec (``{n:,}``, ``{x:.2f}``) or ``len(...)``, or
- a local variable, conditional, ``+`` or ``join`` made only of the above, a parameter or loop
  variable annotated ``Markdown``, or a call of a function declared ``-> Markdown`` (whose own
  returns this test checks the same way).

Anything else (``str(exc)``, a note, a URL value, a file name, a module name) is a raw string
that could render a link or an image inside the app's own boxes: the test names it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py"), ROOT / "app.py"])

#: Methods that render their first argument (or ``body=``) as markdown.
SINKS = {"error", "warning", "info", "success", "toast", "markdown", "caption", "write", "title",
         "header", "subheader", "expander"}
#: Receivers of ``.info`` / ``.warning`` / ``.error`` that are loggers, not Streamlit.
LOGGERS = {"_LOGGER", "logger", "logging", "LOGGER", "log"}
#: Calls whose result is safe markdown (``md`` and ``Markdown`` only with a literal template).
BUILDERS = {"md_escape", "md_code", "error_line", "md_text"}
#: Calls whose result is a number.
NUMBERS = {"len", "int", "float", "round", "abs"}
_NUMERIC_SPEC_END = tuple("dfFgGeE%nxXbo,")


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_markdown_annotation(node: ast.AST | None) -> bool:
    return node is not None and "Markdown" in ast.unparse(node)


@dataclass
class Finding:
    path: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


class Checker:
    """Judges expressions within one module, knowing every function's ``-> Markdown``."""

    def __init__(self, markdown_functions: set[str], module: ast.Module | None = None,
                 shared: dict[str, ast.AST] | None = None) -> None:
        self.markdown_functions = markdown_functions
        self.constants = {k: v for k, v in _constants(module).items() if k.isupper()}  # NAMES only
        self.shared = shared or {}  # module-level constants of every file, for ``module.NAME``

    def literal(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return True
        if isinstance(node, ast.Name) and node.id in self.constants:  # a module-level literal
            return self.literal(self.constants[node.id])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr in self.shared:
            return self.literal(self.shared[node.attr])  # another module's literal (datamode.NOTE)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.literal(node.left) and self.literal(node.right)
        if isinstance(node, ast.JoinedStr):  # an f-string of numbers only
            return all(self.value_ok(v, None, set()) for v in node.values if isinstance(v, ast.FormattedValue))
        return False

    def value_ok(self, value: ast.FormattedValue, scope: ast.AST | None, seen: set) -> bool:
        spec = ast.unparse(value.format_spec) if value.format_spec is not None else ""
        if spec.strip("f'\"").endswith(_NUMERIC_SPEC_END) and value.conversion == -1:
            return True
        inner = value.value
        if isinstance(inner, ast.Call) and _name(inner.func) in NUMBERS:
            return True
        return scope is not None and self.safe(inner, scope, seen) and not isinstance(inner, (ast.Constant,))

    def safe(self, node: ast.AST, scope: ast.AST, seen: set) -> bool:
        """Whether ``node`` (inside function or module ``scope``) is safe markdown."""
        if isinstance(node, (ast.Name, ast.Attribute)) and self.literal(node):
            return True
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str) or node.value is None
        if isinstance(node, ast.JoinedStr):
            return all(self.value_ok(v, scope, seen) or (isinstance(v.value, ast.Constant))
                       for v in node.values if isinstance(v, ast.FormattedValue))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
            return self.safe(node.left, scope, seen) and self.safe(node.right, scope, seen)
        if isinstance(node, ast.IfExp):
            return self.safe(node.body, scope, seen) and self.safe(node.orelse, scope, seen)
        if isinstance(node, ast.BoolOp):
            return all(self.safe(v, scope, seen) for v in node.values)
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in BUILDERS or name in self.markdown_functions:
                return True
            if name == "md_param":  # only on a parameter declared Markdown (its callers are checked)
                args = getattr(scope, "args", None)
                return (len(node.args) == 1 and isinstance(node.args[0], ast.Name) and args is not None
                        and any(a.arg == node.args[0].id and _is_markdown_annotation(a.annotation)
                                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]))
            if name in ("md", "Markdown"):
                return bool(node.args) and self.literal(node.args[0]) and (name == "md" or len(node.args) == 1)
            if name == "join" and isinstance(node.func, ast.Attribute):
                return (self.safe(node.func.value, scope, seen)
                        and len(node.args) == 1 and self.safe_items(node.args[0], scope, seen))
            if name == "format" and isinstance(node.func, ast.Attribute):
                return False  # str.format escapes nothing: use md()
            return False
        if isinstance(node, ast.Name):
            return self.name_ok(node.id, scope, seen)
        if isinstance(node, (ast.List, ast.Tuple)):
            return all(self.safe(e, scope, seen) for e in node.elts)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            return self.safe_items(node, scope, seen)
        return False

    def safe_items(self, node: ast.AST, scope: ast.AST, seen: set) -> bool:
        """A sequence whose items are safe (a comprehension, a list, a Markdown-annotated name)."""
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)) and _filters_markdown(node):
            return True  # [m for m in xs if isinstance(m, Markdown)]: checked at run time
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)):
            known = set()
            for g in node.generators:
                if isinstance(g.target, ast.Name) and self.safe_items(g.iter, scope, seen | known):
                    known.add(("known", g.target.id))
                # a target over unsafe items stays unknown: the element must be safe without it
            return self.safe(node.elt, scope, seen | known)
        if isinstance(node, (ast.List, ast.Tuple)):
            return all(self.safe(e, scope, seen) for e in node.elts)
        return self.safe(node, scope, seen)

    def name_ok(self, name: str, scope: ast.AST, seen: set) -> bool:
        if ("known", name) in seen:
            return True  # the target of a comprehension over safe items
        if name in seen:
            return False  # a cycle proves nothing
        seen = seen | {name}
        args = getattr(scope, "args", None)
        if args is not None:
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if arg.arg == name:
                    return _is_markdown_annotation(arg.annotation)
        sources: list[ast.AST] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                sources.append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                if _is_markdown_annotation(node.annotation):
                    return True
                if node.value is not None:
                    sources.append(node.value)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                sources.append(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == name
                  and node.func.attr in ("append", "insert", "extend")):
                item = node.args[-1] if node.args else ast.Constant(None)
                sources.append(ast.List([item]) if node.func.attr != "extend" else item)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name:
                if not self.safe_items(node.iter, scope, seen):
                    return False
                sources.append(ast.Constant(""))
            elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name) \
                    and node.optional_vars.id == name:
                return False
        return bool(sources) and all(self.safe(s, scope, seen) for s in sources)


def _constants(module: ast.Module | None) -> dict[str, ast.AST]:
    """Module-level ``NAME = value`` assignments."""
    return {t.id: node.value for node in (module.body if module else [])
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name) and node.value is not None}


def _filters_markdown(comp: ast.GeneratorExp | ast.ListComp) -> bool:
    """``[x for x in ... if isinstance(x, Markdown)]`` (the element is the filtered name)."""
    if not isinstance(comp.elt, ast.Name):
        return False
    for generator in comp.generators:
        for cond in generator.ifs:
            if (isinstance(cond, ast.Call) and _name(cond.func) == "isinstance" and len(cond.args) == 2
                    and isinstance(cond.args[0], ast.Name) and cond.args[0].id == comp.elt.id
                    and _name(cond.args[1]) == "Markdown"):
                return True
    return False


def _sink_text(call: ast.Call) -> ast.AST | None:
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in SINKS:
        return None
    receiver = func.value
    if _name(receiver) in LOGGERS:
        return None
    for keyword in call.keywords:
        if keyword.arg in ("body", "label"):
            return keyword.value
    return call.args[0] if call.args else None


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _guarded(call: ast.Call, text: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """``if isinstance(name, Markdown): <sink>(name)``: checked at run time."""
    if not isinstance(text, ast.Name):
        return False
    node = call
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.If) and node in parent.body:
            test = parent.test
            if (isinstance(test, ast.Call) and _name(test.func) == "isinstance" and len(test.args) == 2
                    and isinstance(test.args[0], ast.Name) and test.args[0].id == text.id
                    and _name(test.args[1]) == "Markdown"):
                return True
        node = parent
    return False


def _enclosing(tree: ast.Module) -> dict[ast.AST, ast.AST]:
    """Each node's innermost enclosing function (or the module)."""
    owner: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            owner[child] = scope
            visit(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope)

    visit(tree, tree)
    return owner


#: The escapes themselves (ui/common.py), tested by tests/hostile/test_escaping*.py.
PRIMITIVES = {"md", "md_escape", "md_code", "error_line", "md_text", "md_param", "__add__", "join",
              "format_field",
              "convert_field"}


def _markdown_params(trees) -> dict[str, list[tuple[int, str]]]:
    """Function name -> (position, name) of its parameters annotated ``Markdown``: every call
    must pass safe markdown there (the annotation is checked at the call sites)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for tree in trees:
        for f in _functions(tree):
            params = [*f.args.posonlyargs, *f.args.args]
            offset = 1 if params and params[0].arg in ("self", "cls") else 0
            for i, arg in enumerate(params):
                if _is_markdown_annotation(arg.annotation):
                    out.setdefault(f.name, []).append((i - offset, arg.arg))
            for arg in f.args.kwonlyargs:
                if _is_markdown_annotation(arg.annotation):
                    out.setdefault(f.name, []).append((-1, arg.arg))
    return out


def _passed(call: ast.Call, position: int, name: str) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    if 0 <= position < len(call.args) and not isinstance(call.args[position], ast.Starred):
        return call.args[position]
    return None


def scan(sources: dict[str, str]) -> tuple[list[Finding], int]:
    """Raw markdown sinks (and ``-> Markdown`` returns) in ``{file name: source}``; and how
    many were checked."""
    trees = {name: ast.parse(text, filename=name) for name, text in sources.items()}
    # by name; never a str method's name (Markdown.join must not make every "".join safe)
    markdown_functions = {f.name for tree in trees.values() for f in _functions(tree)
                          if _is_markdown_annotation(f.returns)} - set(dir(str))
    params = _markdown_params(trees.values())
    shared = {name: value for tree in trees.values() for name, value in _constants(tree).items()
              if name.isupper()}
    findings, checked = [], 0
    for rel, tree in trees.items():
        checker = Checker(markdown_functions, tree, shared)
        owner = _enclosing(tree)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for position, name in params.get(_name(node.func), []):
                    arg = _passed(node, position, name)
                    if arg is not None and not (isinstance(arg, ast.Constant) and arg.value is None):
                        checked += 1
                        if not checker.safe(arg, owner.get(node, tree), set()):
                            findings.append(Finding(rel, node.lineno, f"{name}= {ast.unparse(arg)[:150]}"))
                if isinstance(node.func, ast.Attribute) and node.func.attr == "html" and node.args:
                    checked += 1  # HTML is not markdown: only the app's own constant text goes there
                    if not checker.literal(node.args[0]):
                        findings.append(Finding(rel, node.lineno, ast.unparse(node)[:160]))
                    continue
                text = _sink_text(node)
                if text is None:
                    continue
                checked += 1
                if not (checker.safe(text, owner.get(node, tree), set()) or _guarded(node, text, parents)):
                    findings.append(Finding(rel, node.lineno, ast.unparse(node)[:160]))
            elif (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_markdown_annotation(node.returns)
                  and not (rel.endswith("common.py") and node.name in PRIMITIVES)):
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        checked += 1
                        if not checker.safe(ret.value, node, set()):
                            findings.append(Finding(rel, ret.lineno, f"return {ast.unparse(ret.value)[:150]}"))
    return findings, checked


def test_every_markdown_sink_is_escaped():
    """No sink in pages/ or ui/ renders a raw string."""
    findings, checked = scan({str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in FILES})
    assert checked > 50  # the walk found the pages' calls
    assert not findings, "raw text reaches markdown (use ui.common.md):\n" + "\n".join(map(str, findings))


@pytest.mark.parametrize("source, raw", [
    ("st.error(str(exc))", True),
    ("st.info(note)", True),
    ("st.caption(f'Loaded **{repo}**')", True),
    ("x.markdown(f'{name:>10}')", True),
    ("st.warning('No alpha found.')", False),
    ("st.error(md('The link sets {v!c}', v=raw))", False),
    ("st.caption(f'{n:,} modules, {len(mods)} kept, {md_code(name)}')", False),
    ("st.markdown(Markdown(raw))", True),
    ("st.markdown(md(raw))", True),
    ("st.markdown(md(f'{raw}'))", True),
    ("st.info(md_text(note))", False),
    ("show(raw)", True),
    ("show(md('x {}', raw))", False),
    ("st.error('; '.join(m for m in raw if isinstance(m, Markdown)))", False),
    ("st.error('; '.join(m for m in raw if isinstance(m, str)))", True),
    ("st.error(md_param(raw))", True),
    ("if isinstance(raw, Markdown): st.error(raw)", False),
    ("if isinstance(raw, str): st.error(raw)", True),
    ("st.html(f'<b>{raw}</b>')", True),
    ("st.html(md(raw))", True),
    ("st.html('<style>b {}</style>')", False),
    ("(notices if notices is not None else st).error(error_line(exc))", False),
    ("_LOGGER.warning('x %s', name)", False),
])
def test_the_walk_itself(source, raw):
    """The checker flags raw text and passes escaped text (it cannot fail silently)."""
    code = ("def show(text: Markdown) -> None: ...\n"
            f"def f(exc, note, repo, name, raw, n, mods, notices, v):\n    {source}\n")
    findings, checked = scan({"probe.py": code})
    assert checked == (0 if source.startswith("_LOGGER") else 1)
    assert bool(findings) is raw, findings
