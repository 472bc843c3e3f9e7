"""Arithmetic for the `calculator` tool: simpleeval restricted to float arithmetic with capped sizes."""

from __future__ import annotations

import ast
import math
import operator
from typing import Any

import simpleeval

from agent.tools.registry import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000.0


class CalculatorError(ToolError):
    """An expression the calculator will not evaluate; the message is safe to show the model."""


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent:g} is too large (limit {MAX_EXPONENT:g})")
    return float(float(base) ** float(exponent))


def _divide(a: float, b: float) -> float:
    if b == 0:
        raise CalculatorError("division by zero")
    return float(a) / float(b)


OPERATORS: dict[type[ast.AST], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.FloorDiv: lambda a, b: math.floor(_divide(a, b)) * 1.0,
    ast.Mod: lambda a, b: math.fmod(a, b) if b else _divide(a, b),
    ast.Pow: _power,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
FUNCTIONS = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": lambda x: _power(math.e, x),
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
NAMES = {"pi": math.pi, "e": math.e}


class _FloatEval(simpleeval.SimpleEval):  # type: ignore[misc]
    """Every number literal becomes a float, so no expression builds a huge Python integer."""

    def _eval_constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError("only numbers are allowed")
        return float(node.value)


def evaluate(expression: str) -> float:
    """Evaluate an arithmetic expression with floats only; raises CalculatorError with a clear reason."""
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    evaluator = _FloatEval(operators=OPERATORS, functions=FUNCTIONS, names=NAMES)
    try:
        result = evaluator.eval(text)
    except CalculatorError:
        raise
    except OverflowError:
        raise CalculatorError("the result is too large") from None
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r} as arithmetic") from None
    except (simpleeval.InvalidExpression, TypeError, ValueError, ZeroDivisionError) as exc:
        raise CalculatorError(f"cannot evaluate {expression!r}: {exc}") from None
    if not isinstance(result, int | float) or isinstance(result, bool):
        raise CalculatorError("the expression does not give a number")
    if math.isinf(result) or math.isnan(result):
        raise CalculatorError("the result is not a finite number")
    return float(result)


def format_number(value: float) -> str:
    """84.0 -> '84', 0.1 + 0.2 -> '0.3': whole numbers without a point, others to 12 significant digits."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.12g}"
