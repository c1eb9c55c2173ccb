//! The calculator plugin: evaluates arithmetic expressions with a small
//! recursive-descent parser. Nothing is executed as code: the grammar is
//! numbers, `+ - * / % ^`, parentheses, a few constants and functions.

use orchestra_plugin_sdk::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Evaluate {
    /// The expression, e.g. `2 * (3 + 4) ^ 2 / sqrt(16)`. Supports `+ - * / % ^`,
    /// parentheses, `pi`, `e`, and `sqrt abs ln log10 log2 exp sin cos tan asin acos atan
    /// floor ceil round min max`.
    expression: String,
}

#[derive(Serialize, JsonSchema)]
struct Value {
    /// The result.
    result: f64,
}

fn evaluate(args: Evaluate) -> Result<Value, ToolError> {
    if args.expression.len() > 10_000 {
        return Err(ToolError::InvalidArguments(
            "expression longer than 10000 characters".into(),
        ));
    }
    let mut parser = Parser {
        src: args.expression.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let result = parser.expression().map_err(ToolError::InvalidArguments)?;
    parser.skip_spaces();
    if parser.pos != parser.src.len() {
        return Err(ToolError::InvalidArguments(format!(
            "unexpected {:?} at position {}",
            parser.src[parser.pos] as char, parser.pos
        )));
    }
    if !result.is_finite() {
        return Err(ToolError::Failed(
            "the result is not a finite number".into(),
        ));
    }
    Ok(Value { result })
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

type Parsed = Result<f64, String>;

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_spaces();
        if self.src.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expression(&mut self) -> Parsed {
        self.depth += 1;
        if self.depth > 200 {
            return Err("expression nested too deeply".into());
        }
        let mut value = self.term()?;
        loop {
            if self.eat(b'+') {
                value += self.term()?;
            } else if self.eat(b'-') {
                value -= self.term()?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(value)
    }

    fn term(&mut self) -> Parsed {
        let mut value = self.unary()?;
        loop {
            if self.eat(b'*') {
                value *= self.unary()?;
            } else if self.eat(b'/') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err("division by zero".into());
                }
                value /= divisor;
            } else if self.eat(b'%') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err("modulo by zero".into());
                }
                value %= divisor;
            } else {
                break;
            }
        }
        Ok(value)
    }

    fn unary(&mut self) -> Parsed {
        if self.eat(b'-') {
            return Ok(-self.unary()?);
        }
        if self.eat(b'+') {
            return self.unary();
        }
        let base = self.atom()?;
        if self.eat(b'^') {
            // Right-associative: 2^3^2 = 2^9.
            let exponent = self.unary()?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Parsed {
        self.skip_spaces();
        let start = self.pos;
        match self.src.get(self.pos) {
            None => Err("unexpected end of expression".into()),
            Some(b'(') => {
                self.pos += 1;
                let value = self.expression()?;
                if !self.eat(b')') {
                    return Err(format!("missing ')' for '(' at position {start}"));
                }
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || *c == b'.' => {
                while self.pos < self.src.len()
                    && (self.src[self.pos].is_ascii_digit() || self.src[self.pos] == b'.')
                {
                    self.pos += 1;
                }
                if self.pos < self.src.len() && matches!(self.src[self.pos], b'e' | b'E') {
                    let save = self.pos;
                    self.pos += 1;
                    if self.pos < self.src.len() && matches!(self.src[self.pos], b'+' | b'-') {
                        self.pos += 1;
                    }
                    let digits = self.pos;
                    while self.pos < self.src.len() && self.src[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                    if self.pos == digits {
                        self.pos = save;
                    }
                }
                let text = std::str::from_utf8(&self.src[start..self.pos]).unwrap_or("");
                text.parse::<f64>()
                    .map_err(|_| format!("bad number {text:?} at position {start}"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                while self.pos < self.src.len() && self.src[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                let name = std::str::from_utf8(&self.src[start..self.pos]).unwrap_or("");
                match name {
                    "pi" => Ok(std::f64::consts::PI),
                    "e" => Ok(std::f64::consts::E),
                    _ => self.call(name, start),
                }
            }
            Some(c) => Err(format!("unexpected {:?} at position {start}", *c as char)),
        }
    }

    fn call(&mut self, name: &str, at: usize) -> Parsed {
        if !self.eat(b'(') {
            return Err(format!("unknown name {name:?} at position {at}"));
        }
        let mut args = vec![self.expression()?];
        while self.eat(b',') {
            args.push(self.expression()?);
        }
        if !self.eat(b')') {
            return Err(format!("missing ')' after the arguments of {name}"));
        }
        let one = |f: fn(f64) -> f64| -> Parsed {
            match args.as_slice() {
                [x] => Ok(f(*x)),
                _ => Err(format!("{name} takes one argument")),
            }
        };
        match name {
            "sqrt" => one(f64::sqrt),
            "abs" => one(f64::abs),
            "ln" => one(f64::ln),
            "log10" => one(f64::log10),
            "log2" => one(f64::log2),
            "exp" => one(f64::exp),
            "sin" => one(f64::sin),
            "cos" => one(f64::cos),
            "tan" => one(f64::tan),
            "asin" => one(f64::asin),
            "acos" => one(f64::acos),
            "atan" => one(f64::atan),
            "floor" => one(f64::floor),
            "ceil" => one(f64::ceil),
            "round" => one(f64::round),
            "min" => args
                .iter()
                .copied()
                .reduce(f64::min)
                .ok_or_else(|| "min needs arguments".into()),
            "max" => args
                .iter()
                .copied()
                .reduce(f64::max)
                .ok_or_else(|| "max needs arguments".into()),
            _ => Err(format!("unknown function {name:?} at position {at}")),
        }
    }
}

fn plugin() -> Plugin {
    Plugin::new(
        "calculator",
        env!("CARGO_PKG_VERSION"),
        "Evaluates arithmetic expressions exactly as written, without running code.",
    )
    .tool(
        Tool::new(
            "evaluate",
            "Evaluates an arithmetic expression and returns the number.",
            evaluate,
        )
        .read_only(),
    )
}

orchestra_plugin_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expression: &str) -> Result<f64, ToolError> {
        evaluate(Evaluate {
            expression: expression.into(),
        })
        .map(|v| v.result)
    }

    #[test]
    fn arithmetic_follows_precedence() {
        assert_eq!(eval("2 + 3 * 4").unwrap(), 14.0);
        assert_eq!(eval("(2 + 3) * 4").unwrap(), 20.0);
        assert_eq!(eval("2 ^ 3 ^ 2").unwrap(), 512.0);
        assert_eq!(eval("-2 ^ 2").unwrap(), -4.0);
        assert_eq!(eval("7 % 4 + sqrt(16) - max(1, 5, 3)").unwrap(), 2.0);
        assert_eq!(eval("1.5e3 / 3").unwrap(), 500.0);
        assert!((eval("sin(pi / 2)").unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_argument_error() {
        for bad in ["", "1 +", "2 * (3", "foo(1)", "1 / 0", "import os", "1 2"] {
            assert!(
                matches!(eval(bad), Err(ToolError::InvalidArguments(_))),
                "{bad}"
            );
        }
        assert!(eval(&"(".repeat(500)).is_err());
    }
}
