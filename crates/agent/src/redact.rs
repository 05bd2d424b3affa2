//! Keeping secrets out of logs and errors: signed URL query strings, user-info in URLs, and
//! store options whose names say they hold a credential.

/// Option keys (lower-cased substrings) whose values are secrets.
const SECRET_KEYS: [&str; 8] = [
    "secret",
    "token",
    "password",
    "key",
    "sas",
    "credential",
    "signature",
    "session",
];

/// Whether an option named `key` holds a secret (`aws_secret_access_key`, `azure_storage_sas_key`,
/// `google_service_account_key`, ...). Region, endpoint and bucket names are not secrets.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| k.contains(s)) && !k.ends_with("_id") && k != "aws_access_key_id"
}

/// Option keys (lower-cased substrings) known to hold nothing secret: their values may be
/// shown. Any other key's value is hidden, so a misspelt secret option (`account_k3y`) is
/// hidden too.
const PUBLIC_KEYS: [&str; 10] = [
    "endpoint",
    "region",
    "bucket",
    "allow_http",
    "use_emulator",
    "skip_signature",
    "virtual_hosted_style",
    "account_name",
    "container",
    "timeout",
];

/// A store option's value as it may be shown: secrets and options not known to be public
/// are `<redacted>`, endpoints lose any user-info and query.
pub fn option_value(key: &str, value: &str) -> String {
    let k = key.to_ascii_lowercase();
    let public = k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && PUBLIC_KEYS.iter().any(|p| k.contains(p));
    if is_secret_key(key) || !public {
        "<redacted>".to_owned()
    } else if k.contains("endpoint") {
        url(value)
    } else {
        value.to_owned()
    }
}

/// A URL safe to log: user-info replaced, query string and fragment dropped (a presigned
/// URL's signature lives there).
pub fn url(raw: &str) -> String {
    match url::Url::parse(raw) {
        // `user:pass@host/x` parses as scheme `user` with a path: no authority to clean, so
        // it is treated as text.
        Ok(u) if u.cannot_be_a_base() => unparsed_url(raw),
        Ok(mut u) => {
            let had_query = u.query().is_some() || u.fragment().is_some();
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
            }
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?<redacted>");
            }
            s
        }
        // Not a URL (a typo, a mangled scheme): cleaned as text.
        Err(_) => unparsed_url(raw),
    }
}

/// A URL-like string that did not parse: the query and fragment cut, and any
/// `user:password@` in what would be the authority replaced.
fn unparsed_url(raw: &str) -> String {
    let cut = raw.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match cut.find("://") {
        Some(i) => cut.split_at(i + 3),
        None => ("", cut),
    };
    let authority = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority].rfind('@') {
        Some(at) => format!("<redacted>@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    let mut s = format!("{scheme}{rest}");
    if cut.len() < raw.len() {
        s.push_str("?<redacted>");
    }
    s
}

/// A parser's error message (serde_yaml, serde_json) with the input it quotes hidden: they
/// quote the values (in double quotes) and unknown field names (in backticks) they choked
/// on, and a mangled configuration can put a secret in either. Backticked names that look
/// like identifiers stay (`unknown field `sha265`, expected one of ...`), as do lines and
/// columns.
pub fn parser_error(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => {}
                    }
                }
                out.push_str("\"<value hidden>\"");
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|&c| c != '`').collect();
                let identifier = !name.is_empty()
                    && name.len() <= 48
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                out.push('`');
                out.push_str(if identifier { &name } else { "<name hidden>" });
                out.push('`');
            }
            c => out.push(c),
        }
    }
    text(&out)
}

/// Redacts every URL-looking word and `key=value` secret inside free text (error messages from
/// object stores can echo the request URL).
pub fn text(msg: &str) -> String {
    msg.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            let tail = &word[trimmed.len()..];
            let core =
                trimmed.trim_matches(|c| matches!(c, '"' | '\'' | '(' | ')' | ',' | '<' | '>'));
            if core.contains("://") && (core.contains('?') || core.contains('@')) {
                format!("{}{tail}", trimmed.replace(core, &url(core)))
            } else if let Some((k, _)) = core.split_once('=') {
                if is_secret_key(k) {
                    format!("{k}=<redacted>{tail}")
                } else {
                    word.to_owned()
                }
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_options_known_to_be_public_are_shown() {
        // Found by the config fuzzer: a misspelt secret key (`account_k\u{ec37}y`) was shown.
        assert_eq!(
            option_value("azure_storage_account_k\u{ec37}y", "S"),
            "<redacted>"
        );
        assert_eq!(option_value("aws_secret_access_key", "S"), "<redacted>");
        assert_eq!(option_value("some_new_option", "S"), "<redacted>");
        assert_eq!(option_value("aws_region", "us-east-1"), "us-east-1");
        assert_eq!(
            option_value("aws_endpoint", "http://u:S@h:9/?sig=S"),
            "http://redacted@h:9/?<redacted>"
        );
    }

    #[test]
    fn parser_errors_lose_the_input_they_quote() {
        // Found by the config fuzzer: a mangled YAML line put a secret in serde_yaml's error.
        let e = "models[0].verify: invalid type: string \"alse store: {aws_secret_access_key: SECRET\", expected a boolean at line 7 column 13";
        let r = parser_error(e);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(
            r.contains("models[0].verify") && r.contains("line 7 column 13"),
            "{r}"
        );
        assert!(!parser_error("unbalanced \"SECRET").contains("SECRET"));
        let e =
            "unknown field `store:{aws_secret_access_key: SECRET`, expected one of `name`, `store`";
        assert_eq!(
            parser_error(e),
            "unknown field `<name hidden>`, expected one of `name`, `store`"
        );
        assert_eq!(parser_error("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn unparseable_urls_lose_their_user_info_and_query_too() {
        // Found by the config fuzzer (tests/fuzz.rs): a mangled scheme made the URL
        // unparseable, and the password reached the configuration error.
        for (raw, want) in [
            (
                "htt\u{fffd}s://user:SECRET@host/m.onnx",
                "htt\u{fffd}s://<redacted>@host/m.onnx",
            ),
            ("user:SECRET@host/m.onnx", "<redacted>@host/m.onnx"),
            ("x y://h/p?sig=SECRET#f", "x y://h/p?<redacted>"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(raw), want);
            assert!(!url(raw).contains("SECRET"));
        }
    }

    #[test]
    fn signed_urls_and_user_info_are_redacted() {
        let signed = "https://bucket.s3.amazonaws.com/m/model.onnx?X-Amz-Signature=abc123&X-Amz-Credential=AKIA";
        let r = url(signed);
        assert_eq!(r, "https://bucket.s3.amazonaws.com/m/model.onnx?<redacted>");
        assert!(!url("https://user:hunter2@host/x").contains("hunter2"));
        assert_eq!(url("s3://models/magika/3/"), "s3://models/magika/3/");
    }

    #[test]
    fn secrets_in_free_text_are_redacted() {
        let msg =
            "GET https://h/x?sig=SECRET1 failed; aws_secret_access_key=SECRET2 region=us-east-1";
        let r = text(msg);
        assert!(!r.contains("SECRET1") && !r.contains("SECRET2"), "{r}");
        assert!(r.contains("region=us-east-1"), "{r}");
    }

    #[test]
    fn secret_option_names() {
        for k in [
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "azure_storage_sas_key",
            "google_service_account_key",
            "password",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "aws_access_key_id",
            "aws_region",
            "aws_endpoint",
            "allow_http",
            "azure_storage_account_name",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
