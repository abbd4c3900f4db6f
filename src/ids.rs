//! Typed identifiers: user and device names, op ids and seqs.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// The longest user or device name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1 to {MAX_NAME_BYTES} bytes of printable characters without spaces")]
pub struct BadName {
    /// "user" or "device".
    pub what: &'static str,
}

fn check_name(what: &'static str, name: &str) -> Result<(), BadName> {
    let printable = name.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !printable {
        return Err(BadName { what });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates a name.
            pub fn new(name: impl Into<String>) -> Result<Self, BadName> {
                let name = name.into();
                check_name($what, &name)?;
                Ok(Self(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_NAME_BYTES))
                    .pattern(Some(r"^[^\s\x00-\x1f\x7f-\x9f]+$"))
                    .description(Some(concat!("A ", $what, " name: 1 to 128 bytes, printable, no spaces.")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A user: one partition of the log. Tokens name exactly one.
    UserId,
    "user"
);
name_type!(
    /// One of a user's devices (a browser profile, a phone…), named by the client.
    DeviceId,
    "device"
);

/// A position in a user's log: 1 for the first op; 0 means "before the first op".
pub type Seq = i64;

/// An op's client-chosen id (a UUID v7), its idempotency key.
///
/// On the wire: a string in JSON; in MessagePack, 16 bytes of bin (a string is
/// accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(Uuid);

/// Why an op id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOpId {
    /// Not a UUID at all.
    #[error("op id is not a UUID")]
    Malformed,
    /// A UUID, but not version 7.
    #[error("op id must be a UUID v7 (got version {0})")]
    WrongVersion(usize),
}

impl OpId {
    /// Wraps a UUID, requiring version 7 (time-ordered: the index stays append-mostly).
    pub fn new(uuid: Uuid) -> Result<Self, BadOpId> {
        match uuid.get_version_num() {
            7 => Ok(Self(uuid)),
            v => Err(BadOpId::WrongVersion(v)),
        }
    }

    /// A fresh id for the current time.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Reads the 16 bytes the database stores.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, BadOpId> {
        Uuid::from_slice(bytes).map_err(|_| BadOpId::Malformed).and_then(Self::new)
    }

    /// The UUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }

    /// The 16 bytes the database stores.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl utoipa::PartialSchema for OpId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uuid".into())))
            .pattern(Some("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))
            .description(Some("A UUID v7 (hyphenated in JSON, 16 bytes of bin in MessagePack)."))
            .into()
    }
}

impl utoipa::ToSchema for OpId {}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for OpId {
    type Err = BadOpId;
    fn from_str(s: &str) -> Result<Self, BadOpId> {
        Uuid::parse_str(s).map_err(|_| BadOpId::Malformed).and_then(Self::new)
    }
}

impl Serialize for OpId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(&self.0.hyphenated()) } else { s.serialize_bytes(self.0.as_bytes()) }
    }
}

impl<'de> Deserialize<'de> for OpId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OpId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID v7 as a string or 16 bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OpId, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<OpId, E> {
                OpId::from_slice(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a b").is_err());
        assert!(UserId::new("a\u{0}").is_err());
        assert!(DeviceId::new("x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn op_ids_must_be_v7() {
        assert!(OpId::new(Uuid::now_v7()).is_ok());
        assert_eq!(OpId::new(Uuid::nil()), Err(BadOpId::WrongVersion(0)));
        assert!("not-a-uuid".parse::<OpId>().is_err());
        let v4 = "6f1c2c64-4b4e-4c7b-9a55-4b8e3d0c1f11";
        assert_eq!(v4.parse::<OpId>(), Err(BadOpId::WrongVersion(4)));
    }

    #[test]
    fn op_ids_roundtrip_in_both_formats() -> Result<(), Box<dyn std::error::Error>> {
        let id = OpId::generate();
        let json = serde_json::to_string(&id)?;
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<OpId>(&json)?, id);
        let mp = rmp_serde::to_vec(&id)?;
        assert_eq!(mp.len(), 18, "bin8 header + 16 bytes");
        assert_eq!(rmp_serde::from_slice::<OpId>(&mp)?, id);
        let as_str = rmp_serde::to_vec(&id.to_string())?;
        assert_eq!(rmp_serde::from_slice::<OpId>(&as_str)?, id);
        Ok(())
    }
}
