//! `crypto.x509.parse_certificates` and `crypto.x509.parse_and_verify_certificates`:
//! certificates as the JSON OPA gives (Go's `x509.Certificate` field names),
//! for the fields policies read: names, validity, SANs (`URIs` and
//! `URIStrings` carry SPIFFE IDs), key usages, basic constraints, key ids,
//! extensions, algorithms, raw DER and signature.

use std::net::IpAddr;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Map, Value as Json};
use x509_parser::der_parser::parse_der;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use super::keys::{pem_decode, BASE64STD};

/// Certificates from PEM (every block a `CERTIFICATE`), base64 of PEM, or
/// base64 of concatenated DER, as OPA reads them.
fn ders_from_text(text: &str) -> Option<Vec<Vec<u8>>> {
    let concatenated = if text.starts_with("-----BEGIN") {
        from_pem(text)?
    } else {
        let bytes = BASE64STD.decode(text).ok()?;
        if bytes.starts_with(b"-----BEGIN") {
            from_pem(std::str::from_utf8(&bytes).ok()?)?
        } else {
            bytes
        }
    };
    let mut ders = Vec::new();
    let mut rest = concatenated.as_slice();
    while !rest.is_empty() {
        let (after, _) = X509Certificate::from_der(rest).ok()?;
        let len = rest.len() - after.len();
        ders.push(rest[..len].to_vec());
        rest = after;
    }
    Some(ders)
}

fn from_pem(mut text: &str) -> Option<Vec<u8>> {
    let mut der = Vec::new();
    while !text.is_empty() {
        let Some(block) = pem_decode(text) else { break };
        if block.kind != "CERTIFICATE" {
            return None;
        }
        der.extend(block.der);
        text = block.rest;
    }
    Some(der)
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, cert)| cert)
}

/// `crypto.x509.parse_certificates(certs)`.
pub(super) fn parse_certificates(args: &[Json]) -> Option<regorus::Value> {
    let ders = ders_from_text(args.first()?.as_str()?)?;
    let certs: Option<Vec<regorus::Value>> = ders
        .iter()
        .map(|der| parse(der).and_then(|c| to_value(&c, der, true)))
        .collect();
    certs.map(regorus::Value::from)
}

/// `crypto.x509.parse_and_verify_certificates(certs)`: the first certificate
/// is the trusted root, the last the leaf, those between intermediates.
/// `[true, chain]` (leaf first) when the leaf chains up to the root, every
/// certificate is within its validity period, issuers are CAs within their
/// path length, and extended key usages allow server authentication (Go's
/// default); else `[false, []]`.
pub(super) fn parse_and_verify_certificates(args: &[Json]) -> Option<regorus::Value> {
    verify_certificates(args.first()?.as_str()?, &VerifyOptions::default(), true)
}

/// `crypto.x509.parse_and_verify_certificates_with_options(certs, options)`:
/// as above with Go's verify options `DNSName` (the leaf's SANs must match,
/// wildcards included), `CurrentTime` (nanoseconds), `KeyUsages` (names such
/// as `KeyUsageClientAuth`; any one allowed by the whole chain will do) and
/// `MaxConstraintComparisons`; an unknown option is an error. The chain comes
/// without `URIStrings`, as OPA gives it.
pub(super) fn parse_and_verify_certificates_with_options(args: &[Json]) -> Option<regorus::Value> {
    let text = args.first()?.as_str()?;
    let options = VerifyOptions::parse(args.get(1)?.as_object()?);
    let Some(ders) = ders_from_text(text) else {
        return Some(refused());
    };
    if ders.iter().any(|d| parse(d).is_none()) {
        return Some(refused());
    }
    verify_certificates(text, &options?, false)
}

fn refused() -> regorus::Value {
    regorus::Value::from(json!([false, []]))
}

/// Go's `x509.VerifyOptions`, as far as OPA passes them.
struct VerifyOptions {
    /// Seconds since the epoch.
    now: i64,
    /// Extended key usage OIDs, any one of which the chain must allow.
    usages: Vec<&'static str>,
    dns_name: Option<String>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            now: chrono::Utc::now().timestamp(),
            usages: vec![OID_EKU_SERVER_AUTH],
            dns_name: None,
        }
    }
}

const KEY_USAGES: &[(&str, &str)] = &[
    ("KeyUsageAny", OID_EKU_ANY),
    ("KeyUsageServerAuth", OID_EKU_SERVER_AUTH),
    ("KeyUsageClientAuth", "1.3.6.1.5.5.7.3.2"),
    ("KeyUsageCodeSigning", "1.3.6.1.5.5.7.3.3"),
    ("KeyUsageEmailProtection", "1.3.6.1.5.5.7.3.4"),
    ("KeyUsageIPSECEndSystem", "1.3.6.1.5.5.7.3.5"),
    ("KeyUsageIPSECTunnel", "1.3.6.1.5.5.7.3.6"),
    ("KeyUsageIPSECUser", "1.3.6.1.5.5.7.3.7"),
    ("KeyUsageTimeStamping", "1.3.6.1.5.5.7.3.8"),
    ("KeyUsageOCSPSigning", "1.3.6.1.5.5.7.3.9"),
    (
        "KeyUsageMicrosoftServerGatedCrypto",
        "1.3.6.1.4.1.311.10.3.3",
    ),
    ("KeyUsageNetscapeServerGatedCrypto", "2.16.840.1.113730.4.1"),
    (
        "KeyUsageMicrosoftCommercialCodeSigning",
        "1.3.6.1.4.1.311.2.1.22",
    ),
    (
        "KeyUsageMicrosoftKernelCodeSigning",
        "1.3.6.1.4.1.311.61.1.1",
    ),
];

impl VerifyOptions {
    /// `None` where OPA raises an error (a bad or unknown option).
    fn parse(options: &Map<String, Json>) -> Option<Self> {
        let mut out = Self::default();
        for (key, value) in options {
            match key.as_str() {
                "DNSName" => out.dns_name = Some(value.as_str()?.trim_matches('"').to_owned()),
                "CurrentTime" => out.now = value.as_i64()?.div_euclid(1_000_000_000),
                "MaxConstraintComparisons" => {
                    value.as_i64()?;
                }
                "KeyUsages" => {
                    let names = value.as_array()?.iter().filter_map(Json::as_str);
                    let mut usages = Vec::new();
                    for name in names {
                        let name = name.trim_matches('"');
                        usages.push(KEY_USAGES.iter().find(|(n, _)| *n == name)?.1);
                    }
                    if !usages.is_empty() {
                        out.usages = usages;
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

fn verify_certificates(
    text: &str,
    options: &VerifyOptions,
    uri_strings: bool,
) -> Option<regorus::Value> {
    let Some(ders) = ders_from_text(text) else {
        return Some(refused());
    };
    let Some(certs) = ders.iter().map(|d| parse(d)).collect::<Option<Vec<_>>>() else {
        return Some(refused());
    };
    if certs.len() < 2 {
        return Some(refused());
    }
    let Some(chain) = build_chain(&certs, options.now) else {
        return Some(refused());
    };
    let chain_certs: Vec<&X509Certificate<'_>> = chain.iter().map(|&i| &certs[i]).collect();
    let host_ok = options
        .dns_name
        .as_deref()
        .is_none_or(|host| matches_host(chain_certs[0], host));
    if !host_ok || !usages_allowed(&chain_certs, &options.usages) {
        return Some(refused());
    }
    let chain: Option<Vec<regorus::Value>> = chain
        .iter()
        .map(|&i| to_value(&certs[i], &ders[i], uri_strings))
        .collect();
    Some(regorus::Value::from(vec![
        regorus::Value::from(true),
        regorus::Value::from(chain?),
    ]))
}

/// Indexes into `certs` from the leaf (last) up to the root (first), every
/// certificate valid at `now`.
fn build_chain(certs: &[X509Certificate<'_>], now: i64) -> Option<Vec<usize>> {
    let root = 0;
    let leaf = certs.len() - 1;
    let at = x509_time(now)?;
    let mut chain = vec![leaf];
    let mut used = vec![false; certs.len()];
    used[leaf] = true;
    if certs[leaf].as_ref() == certs[root].as_ref() {
        // The leaf is the trusted root itself: a chain of one, as Go builds it.
        return certs[leaf].validity().is_valid_at(at).then_some(chain);
    }
    loop {
        let current = &certs[*chain.last()?];
        if !current.validity().is_valid_at(at) {
            return None;
        }
        let signs = |issuer: &X509Certificate<'_>| {
            issuer.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(issuer.public_key())).is_ok()
        };
        if signs(&certs[root]) {
            if !certs[root].validity().is_valid_at(at) {
                return None;
            }
            chain.push(root);
            return Some(chain);
        }
        let next = (1..leaf).find(|&i| !used[i] && signs(&certs[i]))?;
        let intermediates_below = chain.len() - 1;
        if !may_issue(&certs[next], intermediates_below) {
            return None;
        }
        used[next] = true;
        chain.push(next);
    }
}

/// Whether one of `usages` is allowed by every certificate of the chain that
/// restricts extended key usage (as Go checks a chain).
fn usages_allowed(chain: &[&X509Certificate<'_>], usages: &[&str]) -> bool {
    if usages.contains(&OID_EKU_ANY) {
        return true;
    }
    let restrictions: Vec<Vec<String>> =
        chain.iter().filter_map(|c| ext_key_usage_oids(c)).collect();
    usages.iter().any(|usage| {
        restrictions
            .iter()
            .all(|oids| oids.iter().any(|o| o == usage || o == OID_EKU_ANY))
    })
}

/// Go's `VerifyHostname`: an IP address against the IP SANs, else a name
/// against the DNS SANs (case-insensitive; `*.` matches one label).
fn matches_host(cert: &X509Certificate<'_>, host: &str) -> bool {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let names = &san.value.general_names;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return names.iter().any(|n| match n {
            GeneralName::IPAddress(bytes) => ip_from(bytes) == Some(ip),
            _ => false,
        });
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|n| match n {
        GeneralName::DNSName(pattern) => {
            let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => pattern == host,
            }
        }
        _ => false,
    })
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn x509_time(now: i64) -> Option<x509_parser::time::ASN1Time> {
    x509_parser::time::ASN1Time::from_timestamp(now).ok()
}

/// An intermediate must be a CA whose path length allows the intermediates below it.
fn may_issue(cert: &X509Certificate<'_>, intermediates_below: usize) -> bool {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc
            .value
            .path_len_constraint
            .is_none_or(|max| intermediates_below <= max as usize),
        _ => false,
    }
}

const OID_EKU_ANY: &str = "2.5.29.37.0";
const OID_EKU_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";

/// The extended key usage OIDs, in the certificate's order.
fn ext_key_usage_oids(cert: &X509Certificate<'_>) -> Option<Vec<String>> {
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.5.29.37")?;
    let (_, seq) = parse_der(ext.value).ok()?;
    Some(
        seq.as_sequence()
            .ok()?
            .iter()
            .filter_map(|o| o.as_oid().ok().map(|o| o.to_id_string()))
            .collect(),
    )
}

fn go_ext_key_usage(oid: &str) -> Option<u32> {
    let known = [
        OID_EKU_ANY,
        OID_EKU_SERVER_AUTH,
        "1.3.6.1.5.5.7.3.2",
        "1.3.6.1.5.5.7.3.3",
        "1.3.6.1.5.5.7.3.4",
        "1.3.6.1.5.5.7.3.5",
        "1.3.6.1.5.5.7.3.6",
        "1.3.6.1.5.5.7.3.7",
        "1.3.6.1.5.5.7.3.8",
        "1.3.6.1.5.5.7.3.9",
    ];
    known.iter().position(|k| *k == oid).map(|i| i as u32)
}

fn go_signature_algorithm(oid: &str) -> u32 {
    match oid {
        "1.2.840.113549.1.1.5" => 3,
        "1.2.840.113549.1.1.11" => 4,
        "1.2.840.113549.1.1.12" => 5,
        "1.2.840.113549.1.1.13" => 6,
        "1.2.840.10045.4.1" => 9,
        "1.2.840.10045.4.3.2" => 10,
        "1.2.840.10045.4.3.3" => 11,
        "1.2.840.10045.4.3.4" => 12,
        "1.3.101.112" => 16,
        _ => 0,
    }
}

fn go_public_key_algorithm(oid: &str) -> u32 {
    match oid {
        "1.2.840.113549.1.1.1" => 1,
        "1.2.840.10040.4.1" => 2,
        "1.2.840.10045.2.1" => 3,
        "1.3.101.112" => 4,
        _ => 0,
    }
}

fn oid_components(oid: &x509_parser::der_parser::oid::Oid<'_>) -> Json {
    oid.iter()
        .map(|arcs| arcs.map(Json::from).collect::<Vec<_>>())
        .map(Json::Array)
        .unwrap_or(Json::Null)
}

fn strings_or_null(items: Vec<String>) -> Json {
    if items.is_empty() {
        Json::Null
    } else {
        Json::from(items)
    }
}

/// A `pkix.Name` as Go marshals it.
fn name_json(name: &X509Name<'_>) -> Json {
    let mut fields: Map<String, Json> = Map::new();
    let mut lists: [(&str, &str, Vec<String>); 7] = [
        ("2.5.4.6", "Country", vec![]),
        ("2.5.4.10", "Organization", vec![]),
        ("2.5.4.11", "OrganizationalUnit", vec![]),
        ("2.5.4.7", "Locality", vec![]),
        ("2.5.4.8", "Province", vec![]),
        ("2.5.4.9", "StreetAddress", vec![]),
        ("2.5.4.17", "PostalCode", vec![]),
    ];
    let (mut common_name, mut serial) = (String::new(), String::new());
    let mut names = Vec::new();
    for attr in name.iter_attributes() {
        let Ok(value) = attr.as_str() else { continue };
        let oid = attr.attr_type().to_id_string();
        names.push(json!({"Type": oid_components(attr.attr_type()), "Value": value}));
        match oid.as_str() {
            "2.5.4.3" => common_name = value.to_owned(),
            "2.5.4.5" => serial = value.to_owned(),
            _ => {
                if let Some((_, _, list)) = lists.iter_mut().find(|(o, _, _)| *o == oid) {
                    list.push(value.to_owned());
                }
            }
        }
    }
    for (_, field, list) in lists {
        fields.insert(field.to_owned(), strings_or_null(list));
    }
    fields.insert("SerialNumber".into(), Json::String(serial));
    fields.insert("CommonName".into(), Json::String(common_name));
    fields.insert("Names".into(), Json::from(names));
    fields.insert("ExtraNames".into(), Json::Null);
    Json::Object(fields)
}

/// A `url.URL` as Go marshals it, for the URIs of a certificate's SANs.
fn url_json(uri: &str) -> Json {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (opaque, host, path) = match rest.strip_prefix("//") {
        Some(authority_path) => {
            let split = authority_path.find('/').unwrap_or(authority_path.len());
            let (authority, path) = authority_path.split_at(split);
            let host = authority.rsplit('@').next().unwrap_or(authority);
            ("", host, path)
        }
        None if rest.starts_with('/') => ("", "", rest),
        None => (rest, "", ""),
    };
    json!({
        "Scheme": scheme, "Opaque": opaque, "User": null, "Host": host, "Path": path,
        "RawPath": "", "OmitHost": false, "ForceQuery": false, "RawQuery": query,
        "Fragment": fragment, "RawFragment": "",
    })
}

fn rfc3339(timestamp: i64) -> Json {
    DateTime::from_timestamp(timestamp, 0)
        .map(|t| Json::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        .unwrap_or(Json::Null)
}

/// The serial as a decimal string: it may exceed every machine integer
/// (SPIRE's are 128 bits) and OPA keeps it exact.
fn serial_decimal(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = vec![0];
    for byte in bytes {
        let mut carry = u32::from(*byte);
        for digit in digits.iter_mut() {
            let value = u32::from(*digit) * 256 + carry;
            *digit = (value % 10) as u8;
            carry = value / 10;
        }
        while carry > 0 {
            digits.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    let text: String = digits.iter().rev().map(|d| char::from(b'0' + d)).collect();
    let trimmed = text.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A certificate as a policy value, its serial number exact.
fn to_value(cert: &X509Certificate<'_>, der: &[u8], uri_strings: bool) -> Option<regorus::Value> {
    let mut json = to_json(cert, der);
    if !uri_strings {
        json.as_object_mut()?.remove("URIStrings");
    }
    let mut value = regorus::Value::from(json);
    let serial = regorus::Value::from_numeric_string(&serial_decimal(cert.raw_serial())).ok()?;
    value
        .as_object_mut()
        .ok()?
        .insert(regorus::Value::from("SerialNumber"), serial);
    Some(value)
}

fn to_json(cert: &X509Certificate<'_>, der: &[u8]) -> Json {
    let b64 = |bytes: &[u8]| Json::String(BASE64STD.encode(bytes));
    let mut out = Map::new();
    let mut dns = Vec::new();
    let mut emails = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    let mut key_usage = 0u32;
    let (mut basic_valid, mut is_ca, mut max_path, mut max_path_zero) = (false, false, 0i64, false);
    let (mut subject_key_id, mut authority_key_id) = (Json::Null, Json::Null);
    let mut extensions = Vec::new();
    for ext in cert.extensions() {
        extensions.push(json!({
            "Id": oid_components(&ext.oid),
            "Critical": ext.critical,
            "Value": BASE64STD.encode(ext.value),
        }));
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                        GeneralName::RFC822Name(n) => emails.push((*n).to_owned()),
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            if let Some(ip) = ip_from(bytes) {
                                ips.push(ip.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => key_usage = u32::from(ku.flags),
            ParsedExtension::BasicConstraints(bc) => {
                basic_valid = true;
                is_ca = bc.ca;
                max_path = bc.path_len_constraint.map_or(-1, i64::from);
                max_path_zero = bc.path_len_constraint == Some(0);
            }
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = b64(id.0),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                if let Some(id) = &aki.key_identifier {
                    authority_key_id = b64(id.0);
                }
            }
            _ => {}
        }
    }
    let ext_key_usage = ext_key_usage_oids(cert).map(|oids| {
        oids.iter()
            .filter_map(|o| go_ext_key_usage(o))
            .collect::<Vec<_>>()
    });
    out.insert("Raw".into(), b64(der));
    out.insert(
        "RawTBSCertificate".into(),
        b64(cert.tbs_certificate.as_ref()),
    );
    out.insert("RawSubjectPublicKeyInfo".into(), b64(cert.public_key().raw));
    out.insert("RawSubject".into(), b64(cert.subject().as_raw()));
    out.insert("RawIssuer".into(), b64(cert.issuer().as_raw()));
    out.insert("Signature".into(), b64(&cert.signature_value.data));
    out.insert(
        "SignatureAlgorithm".into(),
        Json::from(go_signature_algorithm(
            &cert.signature_algorithm.algorithm.to_id_string(),
        )),
    );
    out.insert(
        "PublicKeyAlgorithm".into(),
        Json::from(go_public_key_algorithm(
            &cert.public_key().algorithm.algorithm.to_id_string(),
        )),
    );
    out.insert("Version".into(), Json::from(cert.version().0 + 1));
    out.insert("Issuer".into(), name_json(cert.issuer()));
    out.insert("Subject".into(), name_json(cert.subject()));
    out.insert(
        "NotBefore".into(),
        rfc3339(cert.validity().not_before.timestamp()),
    );
    out.insert(
        "NotAfter".into(),
        rfc3339(cert.validity().not_after.timestamp()),
    );
    out.insert("KeyUsage".into(), Json::from(key_usage));
    out.insert("Extensions".into(), Json::from(extensions));
    out.insert(
        "ExtKeyUsage".into(),
        ext_key_usage.map_or(Json::Null, Json::from),
    );
    out.insert("BasicConstraintsValid".into(), Json::Bool(basic_valid));
    out.insert("IsCA".into(), Json::Bool(is_ca));
    out.insert("MaxPathLen".into(), Json::from(max_path));
    out.insert("MaxPathLenZero".into(), Json::Bool(max_path_zero));
    out.insert("SubjectKeyId".into(), subject_key_id);
    out.insert("AuthorityKeyId".into(), authority_key_id);
    out.insert("DNSNames".into(), strings_or_null(dns));
    out.insert("EmailAddresses".into(), strings_or_null(emails));
    out.insert("IPAddresses".into(), strings_or_null(ips));
    let uri_json: Vec<Json> = uris.iter().map(|u| url_json(u)).collect();
    out.insert(
        "URIs".into(),
        if uri_json.is_empty() {
            Json::Null
        } else {
            Json::from(uri_json)
        },
    );
    out.insert("URIStrings".into(), strings_or_null(uris));
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_json_splits_a_spiffe_id() {
        let url = url_json("spiffe://example.org/agent/acme/bot?x=1#f");
        assert_eq!(url["Scheme"], "spiffe");
        assert_eq!(url["Host"], "example.org");
        assert_eq!(url["Path"], "/agent/acme/bot");
        assert_eq!(url["RawQuery"], "x=1");
        assert_eq!(url["Fragment"], "f");
        assert_eq!(url_json("urn:x:y")["Opaque"], "x:y");
    }

    #[test]
    fn bad_input_is_an_error_or_a_refusal() {
        assert_eq!(parse_certificates(&[json!("!!")]), None);
        assert_eq!(
            parse_certificates(&[json!("")]),
            Some(regorus::Value::from(json!([])))
        );
        assert_eq!(
            parse_and_verify_certificates(&[json!("!!")]),
            Some(regorus::Value::from(json!([false, []])))
        );
    }

    #[test]
    fn serials_are_exact_decimals() {
        assert_eq!(serial_decimal(&[0]), "0");
        assert_eq!(serial_decimal(&[0x01, 0x00]), "256");
        assert_eq!(
            serial_decimal(&[0x01; 16]),
            "1334440654591915542993625911497130241"
        );
    }
}
