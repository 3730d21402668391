//! How a front end hands its own rule an input: built on demand, only in the
//! parts the rule can read, and keyed straight from the front end's request
//! so that a request seen before is answered without building anything.

/// The input of one evaluation of a front end's rule.
///
/// `paths` are the parts of `input` the loaded policy can read, as the
/// policy engine found them; they come from the same compiled policy as the
/// evaluation, so a reload in between cannot pair one policy's paths with
/// another's rules.
pub trait RuleInput {
    type Error;

    /// A key from which every value at `paths` of the input [`Self::build`]
    /// would make follows, and whether it can be built at all: two requests
    /// with equal keys must build equal inputs at those paths, or both fail.
    /// A key may say more than that (it need only never say less); `None`
    /// when this request cannot be keyed without building it.
    fn key(&self, paths: &[Vec<String>]) -> Option<Vec<u8>>;

    /// The input document, with at least the subtrees at `paths` (`None`:
    /// the whole input), or why the request cannot become one.
    fn build(&self, paths: Option<&[Vec<String>]>) -> Result<serde_json::Value, Self::Error>;
}

/// Appends one part of a memo key, so that no two sequences of parts write
/// the same bytes: absent, or present with its length. The framing of every
/// memo key, the decision rule's and the front ends' request keys alike.
pub fn push_key_part(key: &mut Vec<u8>, part: Option<&[u8]>) {
    match part {
        None => key.push(0),
        Some(bytes) => {
            key.push(1);
            key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            key.extend_from_slice(bytes);
        }
    }
}
