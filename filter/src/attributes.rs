//! The attribute table: every name an expression may read, its CEL type and where its value
//! comes from. The checker's roots and static types, the activation's resolver, the fast
//! path and the shell's host-property fetch are all built from this one table, so adding an
//! attribute is one row here (and, for a new derivation, one arm in
//! [`crate::request::RequestView::string_attribute`]).
//!
//! Names follow Envoy's attribute vocabulary.

/// The CEL type of an attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CelType {
    String,
    Int,
    Bool,
    Timestamp,
    Map,
}

impl CelType {
    /// The type's name as CEL's `type()` spells it.
    pub fn name(self) -> &'static str {
        match self {
            CelType::String => "string",
            CelType::Int => "int",
            CelType::Bool => "bool",
            CelType::Timestamp => "timestamp",
            CelType::Map => "map",
        }
    }
}

/// How Envoy encodes a host property's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeKind {
    String,
    /// int64, 8 bytes little endian.
    Int,
    /// one byte, 0 or 1.
    Bool,
    /// int64 nanoseconds since the epoch, 8 bytes little endian.
    Timestamp,
}

/// A value computed from the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// `:path` without the query.
    UrlPath,
    /// `:authority`, else `host`.
    Authority,
    /// `:path` after the first `?`.
    Query,
    /// Every header, repeated ones joined with `,`.
    Headers,
    /// The query's parameters, percent-decoded, first value of each.
    QueryParams,
}

/// Where an attribute's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One request header, as sent.
    Header(&'static str),
    /// Computed from the headers.
    Derived(Derived),
    /// An Envoy property the shell fetches (only when some expression reads it).
    Host(AttributeKind),
    /// The verified token.
    Token,
}

macro_rules! attribute_table {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $ty:ident, $source:expr;)*) => {
        /// An attribute an expression may read.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Attribute {
            $($(#[$doc])* $variant,)*
        }

        impl Attribute {
            /// Every attribute, in table order.
            pub const ALL: &'static [Attribute] = &[$(Attribute::$variant,)*];

            /// The attribute's name in CEL, `root.member`.
            pub fn cel_name(self) -> &'static str {
                match self {
                    $(Attribute::$variant => $name,)*
                }
            }

            pub fn cel_type(self) -> CelType {
                match self {
                    $(Attribute::$variant => CelType::$ty,)*
                }
            }

            pub fn source(self) -> Source {
                match self {
                    $(Attribute::$variant => $source,)*
                }
            }
        }
    };
}

use AttributeKind as K;
use Derived as D;

attribute_table! {
    SourceAddress => "source.address", String, Source::Host(K::String);
    SourcePort => "source.port", Int, Source::Host(K::Int);
    DestinationAddress => "destination.address", String, Source::Host(K::String);
    DestinationPort => "destination.port", Int, Source::Host(K::Int);
    ConnectionMtls => "connection.mtls", Bool, Source::Host(K::Bool);
    ConnectionRequestedServerName => "connection.requested_server_name", String, Source::Host(K::String);
    ConnectionTlsVersion => "connection.tls_version", String, Source::Host(K::String);
    ConnectionSubjectPeerCertificate => "connection.subject_peer_certificate", String, Source::Host(K::String);
    ConnectionUriSanPeerCertificate => "connection.uri_san_peer_certificate", String, Source::Host(K::String);
    ConnectionDnsSanPeerCertificate => "connection.dns_san_peer_certificate", String, Source::Host(K::String);
    RequestPath => "request.path", String, Source::Header(":path");
    RequestUrlPath => "request.url_path", String, Source::Derived(D::UrlPath);
    RequestHost => "request.host", String, Source::Derived(D::Authority);
    RequestScheme => "request.scheme", String, Source::Header(":scheme");
    RequestMethod => "request.method", String, Source::Header(":method");
    RequestHeaders => "request.headers", Map, Source::Derived(D::Headers);
    RequestQuery => "request.query", String, Source::Derived(D::Query);
    RequestQueryParams => "request.query_params", Map, Source::Derived(D::QueryParams);
    RequestId => "request.id", String, Source::Header("x-request-id");
    RequestUserAgent => "request.useragent", String, Source::Header("user-agent");
    RequestReferer => "request.referer", String, Source::Header("referer");
    RequestTime => "request.time", Timestamp, Source::Host(K::Timestamp);
    RequestProtocol => "request.protocol", String, Source::Host(K::String);
    JwtClaims => "jwt.claims", Map, Source::Token;
    JwtHeader => "jwt.header", Map, Source::Token;
    JwtProvider => "jwt.provider", String, Source::Token;
}

/// The variables, in the order error messages list them.
pub const ROOTS: [&str; 5] = ["request", "source", "destination", "connection", "jwt"];

impl Attribute {
    /// `root.member` → the attribute.
    pub fn lookup(root: &str, member: &str) -> Option<Attribute> {
        Attribute::ALL.iter().copied().find(|a| {
            a.cel_name()
                .split_once('.')
                .is_some_and(|(r, m)| r == root && m == member)
        })
    }

    pub fn from_cel_name(name: &str) -> Option<Attribute> {
        Attribute::ALL
            .iter()
            .copied()
            .find(|a| a.cel_name() == name)
    }

    /// `request` of `request.path`.
    pub fn root(self) -> &'static str {
        let name = self.cel_name();
        name.split_once('.').map_or(name, |(root, _)| root)
    }

    /// `path` of `request.path`.
    pub fn member(self) -> &'static str {
        let name = self.cel_name();
        name.split_once('.').map_or(name, |(_, member)| member)
    }

    /// The attributes under `root`, in table order.
    pub fn members_of(root: &str) -> impl Iterator<Item = Attribute> + '_ {
        Attribute::ALL
            .iter()
            .copied()
            .filter(move |a| a.root() == root)
    }

    pub fn is_root(name: &str) -> bool {
        ROOTS.contains(&name)
    }

    /// Whether the shell fetches the value from the host.
    pub fn is_host(self) -> bool {
        matches!(self.source(), Source::Host(_))
    }

    /// The property path to pass to `proxy_get_property`.
    pub fn property_path(self) -> [&'static str; 2] {
        [self.root(), self.member()]
    }

    /// How Envoy encodes the property's bytes (`String` for what is not a host property).
    pub fn kind(self) -> AttributeKind {
        match self.source() {
            Source::Host(kind) => kind,
            _ => AttributeKind::String,
        }
    }

    /// A string read straight from the headers (the header or a derivation of them):
    /// what the fast path can read without the interpreter.
    pub fn is_header_string(self) -> bool {
        self.cel_type() == CelType::String
            && matches!(
                self.source(),
                Source::Header(_)
                    | Source::Derived(Derived::UrlPath | Derived::Authority | Derived::Query)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        for a in Attribute::ALL {
            assert!(Attribute::is_root(a.root()), "{a:?}");
            assert_eq!(Attribute::lookup(a.root(), a.member()), Some(*a));
            assert_eq!(Attribute::from_cel_name(a.cel_name()), Some(*a));
        }
        for root in ROOTS {
            assert!(Attribute::members_of(root).next().is_some(), "{root}");
        }
    }
}
