//! The network extension. `ip(s)` and `cidr(s)` build `net.IP` / `net.CIDR` values.
//!
//! Unlike cel-go, `ip()` also accepts `"ip:port"` and `"[v6]:port"` (the port is dropped), so
//! Envoy's `source.address` can be passed as is.

use cel::common::types::{CelBool, CelInt, CelString, Type, BOOL_TYPE, INT_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{Env, ExecutionError};
use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub static IP_TYPE: Type = Type::new_unspecified_type("net.IP");
pub static CIDR_TYPE: Type = Type::new_unspecified_type("net.CIDR");

/// An IP address (IPv4-mapped IPv6 addresses are stored as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip(pub IpAddr);

/// A network: an address and a prefix length (the address is kept as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Val for Ip {
    fn get_type(&self) -> &Type {
        &IP_TYPE
    }
    fn cel_type() -> &'static Type {
        &IP_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Ip>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Ip {}

impl Val for Cidr {
    fn get_type(&self) -> &Type {
        &CIDR_TYPE
    }
    fn cel_type() -> &'static Type {
        &CIDR_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Cidr>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Cidr {}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses an address as cel-go does (no zones, no dotted IPv4-mapped IPv6), plus
/// `ip:port` / `[ip]:port`.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    if s.contains('%') {
        return Err("IP Address with zone value is not allowed".into());
    }
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => {
                return Err(format!(
                    "IP Address '{s}' parse error during conversion from string"
                ))
            }
        },
    };
    if ip.is_ipv6() && s.contains('.') {
        return Err("IPv4-mapped IPv6 address is not allowed".into());
    }
    Ok(canonical(ip))
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    if s.contains('%') {
        return Err("CIDR with zone value is not allowed".into());
    }
    let err = || format!("network address parse error during conversion from string: '{s}'");
    let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
    let ip: IpAddr = addr.parse().map_err(|_| err())?;
    if ip.is_ipv6() && addr.contains('.') {
        return Err("IPv4-mapped IPv6 address is not allowed".into());
    }
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let prefix: u8 = prefix.parse().map_err(|_| err())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(err());
    }
    Ok(Cidr { ip, prefix })
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    let all: u128 = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

impl Cidr {
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let (net, w1) = bits(self.ip);
        let (addr, w2) = bits(canonical(ip));
        w1 == w2 && (net & mask(w1, self.prefix)) == (addr & mask(w1, self.prefix))
    }
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix
            && bits(self.ip).1 == bits(other.ip).1
            && self.contains_ip(other.ip)
    }
    pub fn masked(&self) -> Cidr {
        let (net, w) = bits(self.ip);
        let m = net & mask(w, self.prefix);
        let ip = if w == 32 {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(m).unwrap_or(0)))
        } else {
            IpAddr::V6(Ipv6Addr::from(m))
        };
        Cidr {
            ip,
            prefix: self.prefix,
        }
    }
}

fn err(function: &str, message: String) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn str_arg<'x>(args: &'x [CowVal<'_, '_>], i: usize) -> Result<&'x str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::function_error("network", "expected a string"))
}

fn ip_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<Ip, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<Ip>())
        .copied()
        .ok_or_else(|| ExecutionError::function_error("network", "expected a net.IP"))
}

fn cidr_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<Cidr, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<Cidr>())
        .copied()
        .ok_or_else(|| ExecutionError::function_error("network", "expected a net.CIDR"))
}

type R<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn ok<'b, 'v, T: Val + 'v>(v: T) -> R<'b, 'v> {
    Ok(CowVal::owned(v))
}

fn ip_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = str_arg(&args, 0)?;
    ok(Ip(parse_ip(s).map_err(|m| err("ip", m))?))
}
fn cidr_from_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = str_arg(&args, 0)?;
    ok(parse_cidr(s).map_err(|m| err("cidr", m))?)
}
fn is_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelBool::from(parse_ip(str_arg(&args, 0)?).is_ok()))
}
fn is_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelBool::from(parse_cidr(str_arg(&args, 0)?).is_ok()))
}
fn is_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = str_arg(&args, 0)?;
    let ip = s
        .parse::<IpAddr>()
        .map_err(|_| err("ip.isCanonical", format!("IP Address '{s}' parse error")))?;
    ok(CelBool::from(ip.to_string() == s))
}
fn ip_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelString::from(ip_arg(&args, 0)?.0.to_string()))
}
fn cidr_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let c = cidr_arg(&args, 0)?;
    ok(CelString::from(format!("{}/{}", c.ip, c.prefix)))
}
fn family<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelInt::from(if ip_arg(&args, 0)?.0.is_ipv4() {
        4
    } else {
        6
    }))
}
fn is_unspecified<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelBool::from(ip_arg(&args, 0)?.0.is_unspecified()))
}
fn is_loopback<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelBool::from(ip_arg(&args, 0)?.0.is_loopback()))
}
fn is_global_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    // Go's IP.IsGlobalUnicast: not unspecified, loopback, multicast, link-local or broadcast.
    let ip = ip_arg(&args, 0)?.0;
    let g = match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_link_local()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg0 & 0xffc0) == 0xfe80)
        }
    };
    ok(CelBool::from(g))
}
fn is_link_local_multicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let r = match ip_arg(&args, 0)?.0 {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 224 && o[1] == 0 && o[2] == 0
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
    };
    ok(CelBool::from(r))
}
fn is_link_local_unicast<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let r = match ip_arg(&args, 0)?.0 {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    ok(CelBool::from(r))
}
fn contains_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let c = cidr_arg(&args, 0)?;
    let ip = match args.get(1).and_then(|a| a.downcast_ref::<Ip>()) {
        Some(ip) => ip.0,
        None => parse_ip(str_arg(&args, 1)?).map_err(|m| err("containsIP", m))?,
    };
    ok(CelBool::from(c.contains_ip(ip)))
}
fn contains_cidr<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let c = cidr_arg(&args, 0)?;
    let other = match args.get(1).and_then(|a| a.downcast_ref::<Cidr>()) {
        Some(o) => *o,
        None => parse_cidr(str_arg(&args, 1)?).map_err(|m| err("containsCIDR", m))?,
    };
    ok(CelBool::from(c.contains_cidr(&other)))
}
fn cidr_ip<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(Ip(canonical(cidr_arg(&args, 0)?.ip)))
}
fn cidr_masked<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(cidr_arg(&args, 0)?.masked())
}
fn prefix_length<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    ok(CelInt::from(i64::from(cidr_arg(&args, 0)?.prefix)))
}

/// Registers the network extension on `env`.
pub fn extension(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_type(IP_TYPE.to_owned())?;
    env.add_type(CIDR_TYPE.to_owned())?;
    let ip = || IP_TYPE.to_owned();
    let cidr = || CIDR_TYPE.to_owned();
    env.add_overload("ip", "string_to_ip", vec![STRING_TYPE], ip_from_string)?;
    env.add_overload(
        "cidr",
        "string_to_cidr",
        vec![STRING_TYPE],
        cidr_from_string,
    )?;
    env.add_overload("isIP", "is_ip_string", vec![STRING_TYPE], is_ip)?;
    env.add_overload("isCIDR", "is_cidr_string", vec![STRING_TYPE], is_cidr)?;
    env.add_overload(
        "ip.isCanonical",
        "ip_is_canonical_string",
        vec![STRING_TYPE],
        is_canonical,
    )?;
    env.add_overload("string", "ip_to_string", vec![ip()], ip_to_string)?;
    env.add_overload("string", "cidr_to_string", vec![cidr()], cidr_to_string)?;
    env.add_member_overload("family", "ip_family", ip(), vec![], family)?;
    env.add_member_overload(
        "isUnspecified",
        "ip_is_unspecified",
        ip(),
        vec![],
        is_unspecified,
    )?;
    env.add_member_overload("isLoopback", "ip_is_loopback", ip(), vec![], is_loopback)?;
    env.add_member_overload(
        "isGlobalUnicast",
        "ip_is_global_unicast",
        ip(),
        vec![],
        is_global_unicast,
    )?;
    env.add_member_overload(
        "isLinkLocalMulticast",
        "ip_is_link_local_multicast",
        ip(),
        vec![],
        is_link_local_multicast,
    )?;
    env.add_member_overload(
        "isLinkLocalUnicast",
        "ip_is_link_local_unicast",
        ip(),
        vec![],
        is_link_local_unicast,
    )?;
    env.add_member_overload(
        "containsIP",
        "cidr_contains_ip_ip",
        cidr(),
        vec![ip()],
        contains_ip,
    )?;
    env.add_member_overload(
        "containsIP",
        "cidr_contains_ip_string",
        cidr(),
        vec![STRING_TYPE],
        contains_ip,
    )?;
    env.add_member_overload(
        "containsCIDR",
        "cidr_contains_cidr_cidr",
        cidr(),
        vec![cidr()],
        contains_cidr,
    )?;
    env.add_member_overload(
        "containsCIDR",
        "cidr_contains_cidr_string",
        cidr(),
        vec![STRING_TYPE],
        contains_cidr,
    )?;
    env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
    env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
    env.add_member_overload(
        "prefixLength",
        "cidr_prefix_length",
        cidr(),
        vec![],
        prefix_length,
    )?;
    let _ = (BOOL_TYPE, INT_TYPE);
    Ok(())
}
