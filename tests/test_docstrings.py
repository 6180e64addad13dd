"""Every public name's docstring follows numpydoc: functions have Parameters (every argument
of the signature), Returns, Raises, See Also and Examples; classes Parameters, Raises, See
Also and Examples; their public methods Parameters (every argument) and Returns where they
return something. (The examples themselves run in pytest's --doctest-modules; the docs
build's numpydoc validation checks most of this again.)"""

import inspect

import pytest

numpydoc = pytest.importorskip("numpydoc.docscrape", reason="numpydoc is in the docs extra")



MODULES = ["xentcy"]
for optional in ("torch", "jax"):
    try:
        __import__(f"xentcy.{optional}")
        MODULES.append(f"xentcy.{optional}")
    except ImportError:
        pass

# Evaluation is a result the library builds: it raises nothing of its own
NO_RAISES = {"xentcy.Evaluation"}


def _public():
    import importlib

    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield f"{module_name}.{name}", getattr(module, name)


def _documented(doc):
    names = set()
    for param in doc["Parameters"]:
        names.update(n.strip() for n in param.name.split(","))
    return names


def _arguments(fn):
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


@pytest.mark.parametrize("qualname, obj", list(_public()), ids=[q for q, _ in _public()])
def test_sections(qualname, obj):
    if inspect.isclass(obj):
        doc = numpydoc.ClassDoc(obj)
        wanted = ["Parameters", "See Also", "Examples"] + ([] if qualname in NO_RAISES else ["Raises"])
        signature_of = obj
    else:
        doc = numpydoc.FunctionDoc(obj)
        wanted = ["Parameters", "Returns", "Raises", "See Also", "Examples"]
        signature_of = obj
    missing = [s for s in wanted if not doc[s]]
    assert not missing, f"{qualname}: no {', '.join(missing)} section"
    undocumented = _arguments(signature_of) - _documented(doc)
    assert not undocumented, f"{qualname}: parameters not documented: {sorted(undocumented)}"
    unknown = _documented(doc) - _arguments(signature_of)
    assert not unknown, f"{qualname}: documents parameters it does not take: {sorted(unknown)}"


def _methods():
    for qualname, obj in _public():
        if not inspect.isclass(obj):
            continue
        for name, member in vars(obj).items():
            if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            if name == "extra_repr":  # (torch.nn.Module's hook, not an API of its own)
                continue
            yield f"{qualname}.{name}", member


@pytest.mark.parametrize("qualname, member", list(_methods()), ids=[q for q, _ in _methods()])
def test_method_sections(qualname, member):
    fn = member.fget if isinstance(member, property) else member
    doc = numpydoc.FunctionDoc(fn)
    assert doc["Summary"], f"{qualname}: no summary"
    arguments = set() if isinstance(member, property) else _arguments(fn)
    undocumented = arguments - _documented(doc)
    assert not undocumented, f"{qualname}: parameters not documented: {sorted(undocumented)}"
    returns = inspect.signature(fn).return_annotation
    if returns not in ("None", None, inspect.Signature.empty):
        assert doc["Returns"], f"{qualname}: returns {returns} but has no Returns section"


def test_the_check_can_fail():
    # a docstring without the sections is caught
    def bare(x, y=1):
        """Add."""

    doc = numpydoc.FunctionDoc(bare)
    assert not doc["Parameters"] and _arguments(bare) - _documented(doc) == {"x", "y"}
