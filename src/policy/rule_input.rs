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
