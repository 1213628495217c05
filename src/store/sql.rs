//! A statement and its bound values, written side by side: each value is appended where its
//! `?` goes, so no value can land in another's place. The `clickhouse` crate escapes the
//! values when the statement is sent ([`Sql::query`]); [`Sql::render`] shows the statement as
//! sent, which is what tests compare and run on current ClickHouse.

use clickhouse::{Client, query::Query};
use serde::Serialize;

/// One bound value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Arg {
    Str(String),
    I64(i64),
    U32(u32),
    U64(u64),
    Strs(Vec<String>),
    I64s(Vec<i64>),
    U64s(Vec<u64>),
}

macro_rules! arg_from {
    ($($from:ty => $variant:ident($convert:expr)),* $(,)?) => {
        $(impl From<$from> for Arg {
            fn from(value: $from) -> Self {
                Self::$variant($convert(value))
            }
        })*
    };
}

arg_from! {
    &str => Str(str::to_owned),
    &String => Str(String::clone),
    i64 => I64(std::convert::identity),
    u32 => U32(std::convert::identity),
    u64 => U64(std::convert::identity),
    &[String] => Strs(<[String]>::to_vec),
    &[&str] => Strs(|v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect()),
    &[i64] => I64s(<[i64]>::to_vec),
    &[u64] => U64s(<[u64]>::to_vec),
}

/// SQL text and the values of its `?`, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// A statement starting with `text` (no `?` in it: values go through [`Sql::arg`]).
    pub fn new(text: &str) -> Self {
        let mut sql = Self::default();
        sql.push(text);
        sql
    }

    /// Appends SQL text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        debug_assert!(!text.contains('?'), "a `?` outside Sql::arg: {text}");
        self.text.push_str(text);
        self
    }

    /// Appends a bound value.
    pub fn arg(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.text.push('?');
        self.args.push(value.into());
        self
    }

    /// Appends bound values separated by `, ` (the members of an `IN (...)` list).
    pub fn list<T: Into<Arg>>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.arg(value);
        }
        self
    }

    /// Appends `other`, text and values.
    pub fn append(&mut self, other: Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.args.extend(other.args);
        self
    }

    /// Appends `parts` separated by `separator`.
    pub fn join(&mut self, parts: impl IntoIterator<Item = Sql>, separator: &str) -> &mut Self {
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                self.push(separator);
            }
            self.append(part);
        }
        self
    }

    /// Whether no text was written.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The statement for `client`, its values bound in order.
    pub fn query(&self, client: &Client) -> Query {
        self.args
            .iter()
            .fold(client.query(&self.text), |query, arg| query.bind(arg))
    }

    /// The statement as it is sent, values escaped in place.
    pub fn render(&self) -> String {
        self.query(&Client::default()).sql_display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_rendered_where_they_were_written() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE a = ");
        sql.arg("it's")
            .push(" AND b IN (")
            .list([1i64, 2])
            .push(") AND has(")
            .arg(&["x".to_owned()][..])
            .push(", c) AND d >= ")
            .arg(7u32);
        assert_eq!(
            sql.render(),
            "SELECT 1 FROM t WHERE a = 'it\\'s' AND b IN (1, 2) AND has(['x'], c) AND d >= 7"
        );
        let mut joined = Sql::default();
        joined.join([Sql::new("x"), sql.clone()], " UNION ALL ");
        assert!(joined.render().starts_with("x UNION ALL SELECT 1"));
    }
}
