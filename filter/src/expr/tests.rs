use super::env::KNOWN_FUNCTIONS;
use super::*;
use crate::request::{AttributeValue, HostAttribute, RequestView};
use cel::ExecutionError;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use std::time::UNIX_EPOCH;

fn compile(text: &str) -> Result<Expr, ExprError> {
    Expr::compile(&ExprSource::Inline(text.to_owned()))
}

fn request() -> RequestView {
    RequestView::new(
        "GET",
        "/admin/users?x=1&name=a%20b&x=2&plus=c+d",
        &[
            ("x-tenant", "acme"),
            ("user-agent", "curl/8"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("x-request-id", "rid-1"),
        ],
    )
    .with_attribute(
        HostAttribute::SourceAddress,
        AttributeValue::String("10.1.2.3:5555".into()),
    )
    .with_attribute(HostAttribute::SourcePort, AttributeValue::Int(5555))
    .with_attribute(HostAttribute::ConnectionMtls, AttributeValue::Bool(true))
    .with_attribute(
        HostAttribute::RequestTime,
        AttributeValue::Timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250)),
    )
}

fn jwt() -> JwtAttributes {
    JwtAttributes::from_json(
        "local",
        &json!({"alg": "RS256", "kid": "k1"}),
        &json!({"sub": "alice", "tenant": "acme", "groups": ["admin", "dev"],
                "scope": "read write", "n": 3, "nested": {"a": {"b": true}},
                "mixed": [1, "a", {"k": 2}, 2.5],
                "example.com/roles": ["auditor"]}),
    )
}

fn eval(text: &str) -> Result<cel::Value, EvalError> {
    let req = request();
    let token = jwt();
    let act = Activation::new(&req).with_jwt(Some(&token));
    compile(text)
        .map_err(|e| EvalError(e.to_string()))?
        .eval(&act)
}

fn truth(text: &str) -> bool {
    let req = request();
    let token = jwt();
    let act = Activation::new(&req).with_jwt(Some(&token));
    match compile(text) {
        Ok(e) => match e.eval_bool(&act) {
            Ok(b) => b,
            Err(e) => panic!("{text}: {e}"),
        },
        Err(e) => panic!("{text}: {e}"),
    }
}

#[test]
fn request_attributes() {
    assert!(truth(
        "request.path == '/admin/users?x=1&name=a%20b&x=2&plus=c+d'"
    ));
    assert!(truth("request.url_path == '/admin/users'"));
    assert!(truth("request.query == 'x=1&name=a%20b&x=2&plus=c+d'"));
    assert!(truth("request.query_params.x == '1'"));
    assert!(truth("request.query_params['name'] == 'a b'"));
    assert!(truth("request.query_params.plus == 'c d'"));
    assert!(truth(
        "request.method == 'GET' && request.host == 'localhost'"
    ));
    assert!(truth("request.scheme == 'http'"));
    assert!(truth("request.headers['x-tenant'] == 'acme'"));
    assert!(truth(
        "request.headers.accept == 'text/html,application/json'"
    ));
    assert!(truth(
        "request.id == 'rid-1' && request.useragent == 'curl/8'"
    ));
    assert!(truth("!has(request.referer)"));
    assert!(truth(
        "has(request.headers.accept) && !has(request.headers.cookie)"
    ));
    assert!(eval("request.referer").is_err());
    assert!(truth("request.time > timestamp('2023-01-01T00:00:00Z')"));
    assert!(truth("request.time.getMilliseconds() == 250"));
    assert!(truth("'x-tenant' in request.headers"));
    assert!(truth("request.headers.exists(k, k == 'accept')"));
    assert!(truth("request.method in ['GET', 'HEAD']"));
}

#[test]
fn host_attributes_and_absence() {
    assert!(truth(
        "source.address == '10.1.2.3:5555' && source.port == 5555"
    ));
    assert!(truth("connection.mtls"));
    assert!(truth("!has(destination.address) && has(source.address)"));
    assert!(eval("destination.port == 1").is_err());
    assert!(truth("size(source) == 2"));
}

#[test]
fn jwt_attributes() {
    assert!(truth("jwt.provider == 'local'"));
    assert!(truth("jwt.claims.sub == 'alice'"));
    assert!(truth("'admin' in jwt.claims.groups"));
    assert!(truth("'write' in jwt.claims.scope.split(' ')"));
    assert!(truth("jwt.claims.n == 3"));
    assert!(truth("jwt.claims.nested.a.b"));
    assert!(truth("has(jwt.claims.tenant) && !has(jwt.claims.missing)"));
    assert!(truth("jwt.header.kid == 'k1'"));
    assert!(truth("request.headers['x-tenant'] == jwt.claims.tenant"));
    assert!(eval("jwt.claims.missing == 'x'").is_err());

    let req = request();
    let act = Activation::new(&req);
    let e = compile("jwt.provider == '' && jwt.claims == {} && size(jwt.header) == 0").unwrap();
    assert_eq!(e.eval_bool(&act), Ok(true));
    let e = compile("jwt.claims.sub == 'x'").unwrap();
    assert!(e.eval_bool(&act).is_err());
}

#[test]
fn extracts_host_attributes_and_jwt_use() {
    let e = compile("source.address == '1' && connection.mtls && request.path == '/'").unwrap();
    assert_eq!(
        e.host_attributes(),
        vec![HostAttribute::SourceAddress, HostAttribute::ConnectionMtls]
    );
    assert!(!e.uses_jwt());
    let e = compile("has(destination.port)").unwrap();
    assert_eq!(e.host_attributes(), vec![HostAttribute::DestinationPort]);
    let e = compile("size(source) > 0 || request.time > timestamp(0)").unwrap();
    assert_eq!(
        e.host_attributes(),
        vec![
            HostAttribute::SourceAddress,
            HostAttribute::SourcePort,
            HostAttribute::RequestTime
        ]
    );
    let e = compile("[1].exists(source, source == 1)").unwrap();
    assert!(e.host_attributes().is_empty());
    assert!(compile("jwt.claims.sub == 'a'").unwrap().uses_jwt());
    assert!(
        compile("connection['mtls']").unwrap().host_attributes()
            == vec![HostAttribute::ConnectionMtls]
    );
}

#[test]
fn compile_errors_have_locations() {
    let err = Expr::compile(&ExprSource::File {
        file: "admin.cel".into(),
        source: "// comment\nrequest.path ==\n  ".into(),
    })
    .unwrap_err();
    assert_eq!(err.file.as_deref(), Some("admin.cel"));
    assert_eq!(err.line, 3, "{err}");

    let err = compile("request.path == 'a' &&\n  reqest.method == 'GET'").unwrap_err();
    assert_eq!((err.line, err.column), (2, 3), "{err}");
    assert!(err.message.contains("reqest"), "{err}");

    let err = compile("request.pth == '/'").unwrap_err();
    assert_eq!((err.line, err.column), (1, 9), "{err}");
    assert!(err.message.contains("request.pth"), "{err}");

    let err = compile("// x\n  nosuch(1)").unwrap_err();
    assert_eq!((err.line, err.column), (2, 3), "{err}");
    assert!(err.message.contains("nosuch"), "{err}");
    let err = compile("'a'.size() > 1 &&\n request.path.frobnicate()").unwrap_err();
    assert_eq!((err.line, err.column), (2, 15), "{err}");

    let err = compile("request.path.frobnicate()").unwrap_err();
    assert!(err.message.contains("frobnicate"), "{err}");

    let err = compile("request.path + 1 == 'a'").unwrap_err();
    assert!(err.message.contains("type error"), "{err}");
    assert!(compile("size(1) == 1").is_err());
    assert!(compile("1 + 1.0 == 2").is_err());
    assert!(compile("").is_err());
    assert!(compile("// only a comment").is_err());
    assert!(compile("Foo{a: 1}").is_err());

    let err = compile("request.path == (").unwrap_err();
    assert_eq!(err.line, 1);
    assert!(err.column >= 16, "{err}");
}

#[test]
fn comments_and_multiline() {
    let text = "// admins only\nrequest.url_path.startsWith('/admin') // path\n  && 'admin' in jwt.claims.groups // group\n";
    assert!(truth(text));
    assert!(truth("'//not a comment' == '//not' + ' a comment'"));
}

#[test]
fn macros_bind_variables() {
    assert!(truth("jwt.claims.groups.all(g, g.size() > 2)"));
    assert!(truth(
        "jwt.claims.groups.map(g, g.upperAscii()) == ['ADMIN', 'DEV']"
    ));
    assert!(truth(
        "jwt.claims.groups.filter(g, g.startsWith('a')).size() == 1"
    ));
    assert!(truth("jwt.claims.groups.exists_one(g, g == 'dev')"));
    assert!(compile("jwt.claims.groups.all(g, h)").is_err());
}

#[test]
fn json_converts_to_cel_by_kind() {
    // Was `owned_and_borrowed_json_conversions_agree`: the two conversions are one now.
    let doc = json!({"s": "x", "n": 3, "u": u64::MAX, "f": 2.5, "b": true, "z": null,
                     "l": [1, "a", [2], {"k": "v"}], "m": {"a": {"b": [true]}}});
    let cel::Value::Map(map) = json_to_cel(doc) else {
        panic!("an object converts to a map");
    };
    let get = |k: &str| {
        map.map
            .get(&cel::objects::Key::String(k.to_owned().into()))
            .cloned()
    };
    assert_eq!(get("s"), Some(cel::Value::String(Arc::new("x".to_owned()))));
    assert_eq!(get("n"), Some(cel::Value::Int(3)));
    assert_eq!(get("u"), Some(cel::Value::UInt(u64::MAX)));
    assert_eq!(get("f"), Some(cel::Value::Float(2.5)));
    assert_eq!(get("b"), Some(cel::Value::Bool(true)));
    assert_eq!(get("z"), Some(cel::Value::Null));
    assert!(matches!(get("l"), Some(cel::Value::List(l)) if l.len() == 4));
    assert!(matches!(get("m"), Some(cel::Value::Map(_))));
}

#[test]
fn literal_regex_agrees_with_the_crates_matches() {
    // The crate's own `matches` (compiled per call) is what `eval_unchecked` runs.
    let subjects = [
        "",
        "GET",
        "/api/v1/items",
        "héllo wörld",
        "a\nb",
        "ΑΒΓ",
        "x-y_z",
    ];
    let patterns = [
        ".+",
        "^/api/v[0-9]+/",
        "^G.T$",
        "(?i)hello",
        "\\p{Greek}+",
        "^$",
        "a.b",
        "(?s)a.b",
        "[[:alpha:]]",
        "\\w+-\\w+",
        "ö",
    ];
    for subject in subjects {
        for pattern in patterns {
            let text = format!("s.matches({pattern:?}) == matches(s, {pattern:?})");
            let reference = eval_unchecked(
                &format!("s.matches({pattern:?})"),
                &[("s", cel::Value::String(Arc::new(subject.to_owned())))],
            );
            let ours = compile(&format!("request.method.matches({pattern:?})")).unwrap();
            let view = RequestView::new(subject, "/", &[]);
            let act = Activation::new(&view);
            let got = ours.eval(&act).map_err(|e| e.0);
            assert_eq!(got.ok(), reference.ok(), "{text} on {subject:?}");
            assert_eq!(
                ours.eval_bool(&act),
                ours.eval_bool_interpreted(&act),
                "{text}"
            );
        }
    }
    // Inside a comprehension and as a global call, too.
    let req = request();
    let token = jwt();
    let act = Activation::new(&req).with_jwt(Some(&token));
    let e = compile("jwt.claims.groups.exists(g, g.matches('^ad'))").unwrap();
    assert_eq!(e.eval_bool(&act), Ok(true));
    let e = compile("jwt.claims.groups.all(g, matches(g, '^ad'))").unwrap();
    assert_eq!(e.eval_bool(&act), Ok(false));
    // A computed pattern still works (the interpreter's matches).
    let e = compile("request.method.matches(request.method)").unwrap();
    assert_eq!(e.eval_bool(&act), Ok(true));
    let e = compile("matches(request.method, request.method + '$')").unwrap();
    assert_eq!(e.eval_bool(&act), Ok(true));
}

#[test]
fn an_invalid_literal_regex_is_a_configuration_error_with_its_position() {
    let err = compile("request.path.startsWith('/a') &&\n  request.path.matches('[unclosed')")
        .unwrap_err();
    assert_eq!((err.line, err.column), (2, 24), "{err:?}");
    assert!(err.message.contains("invalid regex"), "{err:?}");
    let err = compile("jwt.claims.groups.exists(g, g.matches('a{99999999}'))").unwrap_err();
    assert!(err.message.contains("invalid regex"), "{err:?}");
}

#[test]
fn fast_path_agrees_with_the_interpreter() {
    let exprs = [
        "request.method == 'GET'",
        "request.method != 'GET'",
        "request.method == 1",
        "request.url_path.startsWith('/admin')",
        "request.path.endsWith('d') || request.query.contains('name')",
        "request.host == 'localhost' && request.scheme == 'http'",
        "request.headers['x-tenant'] == 'acme'",
        "request.headers.accept == 'text/html,application/json'",
        "request.headers['x-missing'] == 'a'",
        "request.headers['X-Tenant'] == 'acme'",
        "'x-tenant' in request.headers",
        "'x-missing' in request.headers",
        "has(request.headers.accept) && !has(request.headers.cookie)",
        "request.referer == 'x'",
        "request.id == 'rid-1' && request.useragent.startsWith('curl/')",
        "request.method in ['GET', 'HEAD']",
        "request.method in []",
        "request.method in [1, 2]",
        "source.address == '10.1.2.3:5555' && source.port == 5555",
        "source.port == 5555u",
        "destination.port == 80",
        "connection.mtls",
        "!connection.mtls || false",
        "jwt.provider == 'local'",
        "jwt.provider != ''",
        "jwt.claims.sub == 'alice'",
        "jwt.claims['tenant'] == request.headers['x-tenant']",
        "jwt.claims.n == 3",
        "jwt.claims.n == 3.0",
        "jwt.claims.missing == 'x'",
        "false && jwt.claims.missing == 'x'",
        "jwt.claims.missing == 'x' && false",
        "true || jwt.claims.missing == 'x'",
        "jwt.claims.missing == 'x' || true",
        "has(jwt.claims.tenant) && !has(jwt.claims.missing)",
        "'admin' in jwt.claims.groups",
        "'root' in jwt.claims.groups",
        "1 in jwt.claims.groups",
        "'write' in jwt.claims.scope.split(' ')",
        "'delete' in jwt.claims.scope.split(' ')",
        "'x' in jwt.claims.n.split(' ')",
        "request.method",
        "jwt.claims.nested.a.b",
        "cidr('10.0.0.0/8').containsIP(ip(source.address))",
        "cidr('10.0.0.0/8').containsIP(source.address)",
        "cidr('192.168.0.0/16').containsIP(ip(source.address))",
        "cidr('10.0.0.0/8').containsIP(ip(request.method))",
        "ip(source.address).isLoopback() || ip('127.0.0.1').isLoopback()",
        "cidr('2001:db8::/32').containsIP(source.address)",
        "has(connection.mtls) && connection.mtls",
        "has(request.useragent) && request.useragent.startsWith('curl/')",
        "has(request.referer) || has(destination.port) || has(jwt.provider)",
        "has(request.path) && has(request.host) && has(source.port)",
        "request.path.matches('^/admin/')",
        "request.path.matches('^/api/')",
        "matches(request.method, '^G.T$')",
        "request.headers['x-missing'].matches('.+')",
        "jwt.claims.n.matches('3')",
        "jwt.claims.groups.exists(g, g.matches('.+'))",
        "'auditor' in jwt.claims.`example.com/roles`",
        "has(jwt.claims.`example.com/roles`)",
        "jwt.claims.groups.exists(i, g, i == 1 && g == 'dev')",
        "cel.block([jwt.claims.groups], 'dev' in cel.index(0))",
        "jwt.claims.groups.exists(g, g == 'dev')",
        "jwt.claims.groups.exists(g, g == 'root')",
        "jwt.claims.groups.all(g, g.startsWith('a'))",
        "jwt.claims.groups.all(g, g.size() > 0)",
        "jwt.claims.groups.exists(g, g == request.method || g == jwt.claims.tenant)",
        "jwt.claims.missing.exists(g, g == 'x')",
        "jwt.claims.groups.exists(request, request == 'dev')",
        "jwt.claims.nested.exists(k, k == 'a')",
        "jwt.claims.groups.exists(g, jwt.claims.groups.exists(h, h == g))",
        "jwt.claims.mixed.exists(x, x == 'a')",
        "jwt.claims.mixed.exists(x, x == 'zzz')",
        "jwt.claims.mixed.all(x, x != 'a')",
        "jwt.claims.mixed.all(x, x != 'zzz')",
        "['dev', 'ops'].exists(g, g == 'dev')",
        "['dev', 'ops'].all(g, g == 'dev')",
        "[1, 'a', true].exists(x, x == 'a')",
        "[].exists(x, x == 'a')",
        "[].all(x, x == 'a')",
        "[request.method].exists(x, x == 'GET')",
        "['GET', 'POST'].exists(m, m == request.method)",
    ];
    let req = request();
    let token = jwt();
    let bare = RequestView::new("POST", "/", &[]);
    let contexts = [
        Activation::new(&req).with_jwt(Some(&token)),
        Activation::new(&req),
        Activation::new(&bare),
    ];
    let mut fast_answers = 0;
    for text in exprs {
        let e = compile(text).unwrap();
        for act in &contexts {
            let interpreted = e.eval_bool_interpreted(act);
            let fast = e.fast.as_ref().and_then(|f| f.eval(act));
            if let Some(fast::FVal::Bool(b)) = fast {
                fast_answers += 1;
                assert_eq!(interpreted, Ok(b), "{text}");
            }
            assert_eq!(e.eval_bool(act), interpreted, "{text}");
        }
    }
    assert!(fast_answers > 60, "{fast_answers}");
    for text in [
        "request.method == 'GET'",
        "'x-tenant' in request.headers && request.headers['x-tenant'] != jwt.claims.tenant",
        "'write' in jwt.claims.scope.split(' ')",
        "request.method in ['GET', 'HEAD'] && request.url_path.startsWith('/api/')",
        "cidr('10.0.0.0/8').containsIP(ip(source.address)) || ip(source.address).isLoopback()",
        "jwt.claims.groups.exists(g, g.matches('.+'))",
        "jwt.claims.groups.all(g, g != 'banned' && !g.startsWith('tmp-'))",
        "request.method == 'GET' && ['dev'].exists(g, g == 'dev')",
    ] {
        assert!(compile(text).unwrap().fast.is_some(), "{text}");
    }
    // eval_string: the fast path renders like the interpreter
    for text in [
        "jwt.claims.sub",
        "jwt.claims.n",
        "request.headers['x-tenant']",
        "source.port",
    ] {
        let e = compile(text).unwrap();
        let act = Activation::new(&req).with_jwt(Some(&token));
        let interpreted = match e.eval(&act).unwrap() {
            cel::Value::String(s) => s.to_string(),
            cel::Value::Int(i) => i.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(e.eval_string(&act), Ok(interpreted), "{text}");
    }
}

#[test]
fn bind_macro() {
    assert!(truth(
        "cel.bind(g, jwt.claims.groups, 'admin' in g && size(g) == 2)"
    ));
    assert!(compile("cel.bind(g, 1, h)").is_err());
}

#[test]
fn two_variable_comprehensions() {
    assert!(truth("jwt.claims.groups.all(i, g, i < 2 && g != '')"));
    assert!(truth(
        "jwt.claims.groups.exists(i, g, i == 1 && g == 'dev')"
    ));
    assert!(truth(
        "jwt.claims.groups.existsOne(i, g, g.startsWith('ad'))"
    ));
    assert!(truth(
        "request.headers.exists(name, value, name == 'x-tenant' && value == 'acme')"
    ));
    assert!(truth(
        "jwt.claims.groups.transformList(i, g, i > 0, g.upperAscii()) == ['DEV']"
    ));
    assert!(truth(
        "jwt.claims.groups.transformMap(i, g, g + '!') == {0: 'admin!', 1: 'dev!'}"
    ));
    assert!(truth(
        "{'a': 1, 'b': 2}.transformMap(k, v, k != 'b', v + 1) == {'a': 2}"
    ));
    assert!(truth(
        "[1, 2].transformMapEntry(i, v, {string(v): i}) == {'1': 0, '2': 1}"
    ));
    // Two entries for one key is an error, as in cel-go.
    assert!(eval("[1, 2].transformMapEntry(i, v, {'k': v})").is_err());
    // Errors are absorbed like in the one-variable forms: a later false decides `all`.
    assert!(truth("![0, 2].all(i, v, 1 / v == 1)"));
    assert!(eval("[0, 1].all(i, v, 1 / v == 1)").is_err());
    // Nested: the inner pair doesn't hide the outer variables.
    assert!(truth(
        "[[1, 2], [3]].all(i, l, l.all(j, x, x > i && j < 2))"
    ));
    assert!(compile("[1].all(i, i, true)")
        .unwrap_err()
        .message
        .contains("duplicate variable"));
    assert!(compile("[1].all(i, 1, true)").is_err());
    assert!(compile("[1].all(i, v, w == v)").is_err());
    assert!(eval("(1).all(i, v, true)").is_err());
}

#[test]
fn block_extension() {
    assert!(truth(
        "cel.block([jwt.claims.groups, size(cel.index(0))], \
         cel.index(1) == 2 && 'dev' in cel.index(0))"
    ));
    assert!(truth(
        "cel.block([[1, 2]], cel.index(0).exists(cel.iterVar(0, 0), cel.iterVar(0, 0) == 2))"
    ));
    assert!(compile("cel.block(jwt.claims.groups, 1) == 1").is_err());
    let err = compile("cel.block([1], cel.index(1) == 1)").unwrap_err();
    assert!(err.message.contains("cel.index(1)"), "{err}");
    assert!(compile("cel.index(0) == 1").is_err());
    assert!(compile("cel.index(request.path) == 1").is_err());
}

#[test]
fn milliseconds_component() {
    assert!(truth(
        "duration('1.5s').getMilliseconds() == 500 && duration('-1.5s').getMilliseconds() == -500"
    ));
    assert!(truth("request.time.getMilliseconds() == 250"));
    assert!(truth(
        "timestamp('2023-05-28T00:00:42.123Z').getMilliseconds('UTC') == 123"
    ));
    assert!(eval("'x'.getMilliseconds()").is_err());
}

#[test]
fn backquoted_field_names() {
    assert!(truth("'auditor' in jwt.claims.`example.com/roles`"));
    assert!(truth("has(jwt.claims.`example.com/roles`)"));
    assert!(truth("!has(jwt.claims.`example.com/groups`)"));
    assert!(truth("request.headers.`x-tenant` == 'acme'"));
    assert!(compile("request.`path` == '/'").is_ok());
    assert!(compile("request.`pth` == '/'").is_err());
}

#[test]
fn strings_extension() {
    assert!(truth(
        "'abc'.charAt(1) == 'b' && 'abcb'.lastIndexOf('b') == 3"
    ));
    assert!(truth("'a,b'.split(',').join('-') == 'a-b'"));
    assert!(truth("' x '.trim() == 'x' && 'AbC'.lowerAscii() == 'abc'"));
    assert!(truth(
        "'hello'.substring(1, 3) == 'el' && 'aXa'.replace('a', 'b') == 'bXb'"
    ));
    assert!(truth(
        "'abc'.indexOf('c') == 2 && 'abc'.upperAscii() == 'ABC'"
    ));
    assert!(truth("strings.quote('a\"b') == '\"a\\\\\"b\"'"));
    assert!(truth("size('héllo') == 5"));
}

#[test]
fn network_extension() {
    assert!(truth("cidr('10.0.0.0/8').containsIP(ip(source.address))"));
    assert!(truth("cidr('10.0.0.0/8').containsIP(source.address)"));
    assert!(truth("!cidr('192.168.0.0/16').containsIP(ip('10.1.2.3'))"));
    assert!(truth(
        "ip('[::1]:8080').isLoopback() && ip('::1').family() == 6"
    ));
    assert!(truth(
        "ip('127.0.0.1').isLoopback() && ip('1.2.3.4').family() == 4"
    ));
    assert!(truth(
        "cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')"
    ));
    assert!(truth("cidr('192.168.0.0/24').prefixLength() == 24"));
    assert!(truth("cidr('192.168.0.0/24').ip() == ip('192.168.0.0')"));
    assert!(truth("cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')"));
    assert!(truth("!cidr('10.0.0.0/16').containsCIDR('10.0.0.0/8')"));
    assert!(truth(
        "isIP('::1') && !isIP('nope') && string(ip('::ffff:c0a8:1')) == '192.168.0.1'"
    ));
    assert!(truth("cidr('2001:db8::/32').containsIP('2001:db8::1')"));
    assert!(truth("!cidr('2001:db8::/32').containsIP('10.0.0.1')"));
    assert!(truth("cidr('0.0.0.0/0').containsIP('1.2.3.4')"));
    assert!(truth("type(ip('1.2.3.4')) == net.IP"));
    assert!(eval("ip('300.1.1.1')").is_err());
    assert!(eval("cidr('10.0.0.0/33')").is_err());
}

#[test]
fn errors_never_show_values() {
    let err = eval("request.headers['x-tenant'] < 1").unwrap_err();
    assert!(!err.0.contains("acme"), "{err}");
    let err = eval("jwt.claims.sub + 1 == 2").unwrap_err();
    assert!(!err.0.contains("alice"), "{err}");
    let err = eval("int(jwt.claims.sub) == 2").unwrap_err();
    assert!(!err.0.contains("alice"), "{err}");
}

#[test]
fn eval_string_and_bool() {
    let req = request();
    let act = Activation::new(&req);
    assert_eq!(
        compile("request.headers['x-tenant']")
            .unwrap()
            .eval_string(&act),
        Ok("acme".into())
    );
    assert_eq!(
        compile("source.port").unwrap().eval_string(&act),
        Ok("5555".into())
    );
    assert!(compile("request.path").unwrap().eval_bool(&act).is_err());
}

#[test]
fn every_known_function_is_registered() {
    // Calling each with no arguments must fail with "no overload", not "undeclared".
    let env = shared_env().unwrap();
    for f in KNOWN_FUNCTIONS {
        let undeclared = [format!("{f}()"), format!("''.{f}()")].iter().all(|call| {
            let Ok(p) = env.compile(call) else {
                return true;
            };
            let ctx = cel::Context::with_env(env.clone());
            matches!(p.execute(&ctx), Err(ExecutionError::UndeclaredReference(_)))
        });
        assert!(!undeclared, "{f} is not registered");
    }
}

#[test]
fn unchecked_evaluation() {
    let v = eval_unchecked("x + 1", &[("x", cel::Value::Int(2))]).unwrap();
    assert_eq!(v, cel::Value::Int(3));
    assert!(matches!(eval_unchecked("(", &[]), Err(Err(_))));
    assert!(matches!(eval_unchecked("1/0", &[]), Err(Ok(_))));
}

/// Per-expression costs (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn expression_timing() {
    let req = request();
    let token = jwt();
    for text in [
        "true",
        "'abc'.startsWith('a')",
        "startsWith('abc', 'a')",
        "request.method.startsWith('G')",
        "request.method.size() == 3",
        "size(request.method) == 3",
        "request.url_path == '/admin/users'",
        "request.method == 'GET'",
        "request.url_path.startsWith('/public/')",
        "request.headers['x-tenant'] == 'acme'",
        "'x-tenant' in request.headers",
        "jwt.claims.tenant == 'acme'",
        "'admin' in jwt.claims.groups",
        "'write' in jwt.claims.scope.split(' ')",
        "request.method in ['POST', 'PUT', 'PATCH']",
        "cidr('10.0.0.0/8').containsIP(ip(source.address))",
        "connection.mtls",
    ] {
        let e = compile(text).unwrap();
        let n = 20_000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let act = Activation::new(&req).with_jwt(Some(&token));
            let _ = e.eval_bool(&act);
        }
        println!("{:>10?}  {text}", start.elapsed() / n);
    }
}
