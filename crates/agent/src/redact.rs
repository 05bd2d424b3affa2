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

/// A URL-like string that did not parse: not shown beyond its scheme. A mangled URL has no
/// reliable structure (a `?` turned into `$`, a password where a port would be), so no part
/// of it can be trusted to be free of a credential.
fn unparsed_url(raw: &str) -> String {
    match raw.find("://") {
        Some(i)
            if raw[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            format!("{}://<not shown: not a valid URL>", &raw[..i])
        }
        _ => "<not shown: not a valid URL>".to_owned(),
    }
}

/// A parser's error message (serde_yaml, serde_json) without the input it quotes: parsers
/// quote the value (in double quotes) or unknown field name (in backticks) they choked on,
/// and a mangled configuration can put a secret in either, quotes and backticks included, so
/// no attempt is made to tell quoted input from the parser's own words: the message is cut
/// at its first quote or backtick. What is left names the field path and the kind of error;
/// the line and column point at the input.
pub fn parser_error(msg: &str) -> String {
    let Some(cut) = msg.find(['"', '`']) else {
        return text(msg);
    };
    let head = msg[..cut].trim_end();
    // serde_yaml ends with ` at line L column C`: kept when it is exactly that.
    let location = msg.rfind(" at line ").map(|i| &msg[i..]).filter(|l| {
        let words: Vec<&str> = l.trim_end_matches('.').split_whitespace().collect();
        matches!(words.as_slice(), ["at", "line", n, "column", m]
            if n.bytes().all(|b| b.is_ascii_digit()) && m.bytes().all(|b| b.is_ascii_digit()))
    });
    text(&format!(
        "{head} (the input quoted here is not shown){}",
        location
            .map(|l| l.trim_end_matches('.'))
            .unwrap_or_default()
    ))
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
        // Found by the config fuzzer: mangled YAML put secrets in serde_yaml's messages, in
        // quoted values and in backticked field names (backticks and quotes included).
        for e in [
            "models[0].verify: invalid type: string \"alse store: {aws_secret_access_key: SECRET\", expected a boolean at line 7 column 13",
            "models[0]: unknown field `store:{aws_secret_access_key: SECRET`, expected one of `name`, `store` at line 8 column 5",
            "models[0]: unknown field `` SECRET, x`name`source` at line 8 column 5.",
            "unbalanced \"SECRET",
        ] {
            let r = parser_error(e);
            assert!(!r.contains("SECRET"), "{r}");
        }
        assert_eq!(
            parser_error("models[0].verify: invalid type: string \"x\", expected a boolean at line 7 column 13"),
            "models[0].verify: invalid type: string (the input quoted here is not shown) at line 7 column 13"
        );
        assert_eq!(parser_error("missing field root"), "missing field root");
    }

    #[test]
    fn unparseable_urls_are_not_shown() {
        // Found by the config fuzzer: a mangled scheme, a `?` turned into `$`, a password
        // where a port would be: each put a secret in a configuration error.
        for raw in [
            "htt\u{fffd}s://user:SECRET@host/m.onnx",
            "https://user:SECRET$host/m.onnx",
            "%ttp://h/m.onnx$X-Amz-Signature=SECRET",
            "\u{a1}https0//user:SECRET@host/m.onnx",
            "user:SECRET@host/m.onnx",
        ] {
            assert!(!url(raw).contains("SECRET"), "{}", url(raw));
        }
        assert_eq!(
            url("https://user:SECRET$host/m.onnx"),
            "https://<not shown: not a valid URL>"
        );
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
