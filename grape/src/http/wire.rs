//! The API's wire shapes: parsing request `data` and building answers. Pure.
//!
//! Each parser takes the request's `data` (a JSON value) and returns the typed request or
//! the Grenache error string to answer with; see [`super`] for the table of shapes.

use std::net::SocketAddrV4;

use mainline::{Id, MutableItem};
use serde_json::{json, Value};

use super::{
    ERR_GRAPE_ANNOUNCE, ERR_GRAPE_HASH_FORMAT, ERR_GRAPE_LOOKUP, ERR_GRAPE_PUT, ERR_GRAPE_PUT_SIG,
    ERR_GRAPE_SERVICE_PORT,
};
use crate::bep44;
use crate::error::{GrapeError, ItemProblem};

/// Parses announce data `["name", port]`.
pub(super) fn parse_announce(data: &Value) -> Result<(&str, u16), &'static str> {
    let Some(items) = data.as_array() else {
        return Err(ERR_GRAPE_ANNOUNCE);
    };
    let name = match items.first().and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name,
        _ => return Err(ERR_GRAPE_ANNOUNCE),
    };
    let port = items
        .get(1)
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or(ERR_GRAPE_SERVICE_PORT)?;
    Ok((name, port))
}

/// Parses lookup data, a non-empty name.
pub(super) fn parse_lookup(data: &Value) -> Result<&str, &'static str> {
    match data.as_str() {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(ERR_GRAPE_LOOKUP),
    }
}

/// The lookup answer: `["ip:port", ...]`.
pub(super) fn peers_json(peers: &[SocketAddrV4]) -> Value {
    Value::Array(peers.iter().map(|p| Value::from(p.to_string())).collect())
}

/// A parsed `/put`.
#[derive(Debug, PartialEq)]
pub(super) enum PutRequest {
    /// `{"v"}`: an immutable item.
    Immutable(Vec<u8>),
    /// `{"v", "k", "sig", "seq", ...}`: a checked mutable item.
    Mutable {
        item: Box<MutableItem>,
        cas: Option<i64>,
    },
}

fn hex_array<const N: usize>(value: &Value) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(value.as_str()?, &mut out).ok()?;
    Some(out)
}

/// An optional field: absent or `null` is `None`; present must parse.
fn optional<'a, T>(
    data: &'a Value,
    field: &str,
    parse: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, ()> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse(v).map(Some).ok_or(()),
    }
}

pub(super) fn parse_put(data: &Value) -> Result<PutRequest, &'static str> {
    if !data.is_object() {
        return Err(ERR_GRAPE_PUT);
    }
    let v = data
        .get("v")
        .and_then(Value::as_str)
        .ok_or(ERR_GRAPE_PUT)?
        .as_bytes();
    let k = optional(data, "k", hex_array::<32>).map_err(|()| ERR_GRAPE_PUT_SIG)?;
    let sig = optional(data, "sig", hex_array::<64>).map_err(|()| ERR_GRAPE_PUT_SIG)?;
    let salt = optional(data, "salt", Value::as_str).map_err(|()| ERR_GRAPE_PUT)?;
    let seq = optional(data, "seq", Value::as_i64).map_err(|()| ERR_GRAPE_PUT)?;
    let cas = optional(data, "cas", Value::as_i64).map_err(|()| ERR_GRAPE_PUT)?;
    let Some(k) = k else {
        // Immutable: no key, so no signature, sequence number, salt or CAS either.
        if sig.is_some() || seq.is_some() || salt.is_some() || cas.is_some() {
            return Err(ERR_GRAPE_PUT);
        }
        bep44::check_sizes(v, None).map_err(|p| GrapeError::from(p).code())?;
        return Ok(PutRequest::Immutable(v.to_vec()));
    };
    let sig = sig.ok_or(ERR_GRAPE_PUT_SIG)?;
    let seq = seq.ok_or(ERR_GRAPE_PUT)?;
    let item = bep44::verify_mutable(&k, &sig, v, seq, salt.map(str::as_bytes))
        .map_err(|p: ItemProblem| GrapeError::from(p).code())?;
    Ok(PutRequest::Mutable {
        item: Box::new(item),
        cas,
    })
}

/// A parsed `/get`.
#[derive(Debug, PartialEq)]
pub(super) struct GetRequest {
    pub(super) target: Id,
    pub(super) salt: Option<Vec<u8>>,
    pub(super) k: Option<[u8; 32]>,
}

pub(super) fn parse_get(data: &Value) -> Result<GetRequest, &'static str> {
    let target_of = |v: &Value| hex_array::<20>(v).map(Id::from);
    if data.is_string() {
        let target = target_of(data).ok_or(ERR_GRAPE_HASH_FORMAT)?;
        return Ok(GetRequest {
            target,
            salt: None,
            k: None,
        });
    }
    if !data.is_object() {
        return Err(ERR_GRAPE_HASH_FORMAT);
    }
    let hash = optional(data, "hash", target_of).map_err(|()| ERR_GRAPE_HASH_FORMAT)?;
    let salt = optional(data, "salt", Value::as_str)
        .map_err(|()| ERR_GRAPE_HASH_FORMAT)?
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec());
    let k = optional(data, "k", hex_array::<32>).map_err(|()| ERR_GRAPE_HASH_FORMAT)?;
    let target = match (hash, &k) {
        (Some(hash), _) => hash,
        (None, Some(k)) => bep44::mutable_target(k, salt.as_deref()),
        (None, None) => return Err(ERR_GRAPE_HASH_FORMAT),
    };
    Ok(GetRequest { target, salt, k })
}

pub(super) fn item_json(item: &MutableItem) -> Value {
    let mut out = json!({
        "id": item.target().to_string(),
        "v": String::from_utf8_lossy(item.value()),
        "k": hex::encode(item.key()),
        "sig": hex::encode(item.signature()),
        "seq": item.seq(),
    });
    if let (Some(salt), Some(obj)) = (item.salt(), out.as_object_mut()) {
        obj.insert(
            "salt".to_owned(),
            Value::from(String::from_utf8_lossy(salt)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainline::SigningKey;

    #[test]
    fn announce_parsing() {
        assert_eq!(parse_announce(&json!(["svc", 1337])), Ok(("svc", 1337)));
        assert_eq!(
            parse_announce(&json!(["svc", 65535, "extra"])),
            Ok(("svc", 65535))
        );
        assert_eq!(parse_announce(&json!("svc")), Err(ERR_GRAPE_ANNOUNCE));
        assert_eq!(parse_announce(&json!(null)), Err(ERR_GRAPE_ANNOUNCE));
        assert_eq!(parse_announce(&json!([])), Err(ERR_GRAPE_ANNOUNCE));
        assert_eq!(parse_announce(&json!(["", 1])), Err(ERR_GRAPE_ANNOUNCE));
        assert_eq!(parse_announce(&json!([5, 1])), Err(ERR_GRAPE_ANNOUNCE));
        for port in [
            json!(0),
            json!(65536),
            json!(-1),
            json!(1.5),
            json!("80"),
            json!(null),
        ] {
            assert_eq!(
                parse_announce(&json!(["svc", port])),
                Err(ERR_GRAPE_SERVICE_PORT),
                "port {port}"
            );
        }
        assert_eq!(parse_announce(&json!(["svc"])), Err(ERR_GRAPE_SERVICE_PORT));
    }

    #[test]
    fn lookup_parsing() {
        assert_eq!(parse_lookup(&json!("svc")), Ok("svc"));
        for bad in [
            json!(""),
            json!(null),
            json!(5),
            json!(["svc"]),
            json!({"a": 1}),
        ] {
            assert_eq!(parse_lookup(&bad), Err(ERR_GRAPE_LOOKUP), "{bad}");
        }
    }

    fn signed(v: &str, seq: i64, salt: Option<&str>) -> (MutableItem, Value) {
        let item = MutableItem::new(
            SigningKey::from_bytes(&[9; 32]),
            v.as_bytes(),
            seq,
            salt.map(str::as_bytes),
        );
        let mut data = json!({
            "v": v,
            "k": hex::encode(item.key()),
            "sig": hex::encode(item.signature()),
            "seq": seq,
        });
        if let Some(salt) = salt {
            data["salt"] = json!(salt);
        }
        (item, data)
    }

    #[test]
    fn put_parsing_immutable() {
        assert_eq!(
            parse_put(&json!({"v": "hello"})),
            Ok(PutRequest::Immutable(b"hello".to_vec()))
        );
        assert_eq!(
            parse_put(&json!({"v": "x".repeat(1001)})),
            Err("ERR_GRAPE_PUT_TOO_BIG")
        );
        for bad in [
            json!("hello"),
            json!(null),
            json!({}),
            json!({"v": 5}),
            json!({"v": "x", "seq": 1}),
            json!({"v": "x", "salt": "s"}),
            json!({"v": "x", "sig": "00".repeat(64)}),
        ] {
            assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT), "{bad}");
        }
    }

    #[test]
    fn put_parsing_mutable() {
        let (item, data) = signed("hello", 3, Some("salty"));
        assert_eq!(
            parse_put(&data),
            Ok(PutRequest::Mutable {
                item: Box::new(item.clone()),
                cas: None
            })
        );
        let mut with_cas = data.clone();
        with_cas["cas"] = json!(2);
        assert!(matches!(
            parse_put(&with_cas),
            Ok(PutRequest::Mutable { cas: Some(2), .. })
        ));
        // Tampered value, missing or malformed signature or key.
        let mut bad = data.clone();
        bad["v"] = json!("hellO");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT_SIG));
        let mut bad = data.clone();
        bad.as_object_mut().unwrap().remove("sig");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT_SIG));
        let mut bad = data.clone();
        bad["k"] = json!("zz");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT_SIG));
        let mut bad = data.clone();
        bad["sig"] = json!("00");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT_SIG));
        // Missing seq, non-integer cas, non-string salt.
        let mut bad = data.clone();
        bad.as_object_mut().unwrap().remove("seq");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT));
        let mut bad = data.clone();
        bad["cas"] = json!("2");
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT));
        let mut bad = data;
        bad["salt"] = json!(5);
        assert_eq!(parse_put(&bad), Err(ERR_GRAPE_PUT));
    }

    #[test]
    fn get_parsing() {
        let hex40 = "0123456789abcdef0123456789ABCDEF01234567";
        let target = Id::from(hex_array::<20>(&json!(hex40)).unwrap());
        assert_eq!(
            parse_get(&json!(hex40)),
            Ok(GetRequest {
                target,
                salt: None,
                k: None
            })
        );
        assert_eq!(
            parse_get(&json!({"hash": hex40, "salt": "s"})),
            Ok(GetRequest {
                target,
                salt: Some(b"s".to_vec()),
                k: None
            })
        );
        // A key alone names its target.
        let k = [3u8; 32];
        assert_eq!(
            parse_get(&json!({"k": hex::encode(k), "salt": "s"})),
            Ok(GetRequest {
                target: bep44::mutable_target(&k, Some(b"s")),
                salt: Some(b"s".to_vec()),
                k: Some(k)
            })
        );
        for bad in [
            json!("xyz"),
            json!(&hex40[..38]),
            json!(format!("{hex40}00")),
            json!(5),
            json!(null),
            json!({}),
            json!({"hash": 5}),
            json!({"hash": "nothex"}),
            json!({"hash": hex40, "salt": 1}),
            json!({"hash": hex40, "k": "00"}),
        ] {
            assert_eq!(parse_get(&bad), Err(ERR_GRAPE_HASH_FORMAT), "{bad}");
        }
    }

    #[test]
    fn item_answer_shape() {
        let (item, _) = signed("hello", 3, Some("salty"));
        let answer = item_json(&item);
        assert_eq!(answer["id"], json!(item.target().to_string()));
        assert_eq!(answer["v"], json!("hello"));
        assert_eq!(answer["k"], json!(hex::encode(item.key())));
        assert_eq!(answer["sig"], json!(hex::encode(item.signature())));
        assert_eq!(answer["seq"], json!(3));
        assert_eq!(answer["salt"], json!("salty"));
        let (item, _) = signed("hello", 3, None);
        assert!(item_json(&item).get("salt").is_none());
    }

    #[test]
    fn peers_answer_shape() {
        let peers = [
            SocketAddrV4::new([127, 0, 0, 1].into(), 80),
            SocketAddrV4::new([10, 0, 0, 2].into(), 65535),
        ];
        assert_eq!(
            peers_json(&peers),
            json!(["127.0.0.1:80", "10.0.0.2:65535"])
        );
        assert_eq!(peers_json(&[]), json!([]));
    }
}
