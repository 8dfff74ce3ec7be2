//! A validated model: an [`Eqf`] image whose tensors have all been checked
//! against the config (presence, shape, scheme) once, up front.
use crate::error::RuntimeError;
use edgeq_core::format::GLOBAL_LAYER;
#[cfg(feature = "act-quant")]
use edgeq_core::ActMode;
use edgeq_core::{ActQuant, Eqf, FormatError, ModelConfig, ParseOptions, Scheme, TensorRole, TensorView};

#[derive(Clone, Copy)]
pub struct Model<'a> {
    pub eqf: Eqf<'a>,
    pub cfg: ModelConfig,
}

/// The tensors of one decoder block.
pub struct Block<'a> {
    pub attn_norm: &'a [f32],
    pub wq: TensorView<'a>,
    pub wk: TensorView<'a>,
    pub wv: TensorView<'a>,
    pub wo: TensorView<'a>,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub w_gate: TensorView<'a>,
    pub w_down: TensorView<'a>,
    pub w_up: TensorView<'a>,
    /// Run-time quantization of the linears' inputs (W8A8 layers; EQF
    /// ACT_QUANT section), `None` = as the session says.
    pub act: BlockActs<'a>,
    /// Column permutations of the linears' inputs (GPTQ act-order; EQF
    /// INPUT_PERM): stored column `i` multiplies `x[perm[i]]`.
    pub perm: BlockPerms<'a>,
}

/// The input permutation of each linear of a block (`None`: columns in order).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockPerms<'a> {
    pub wq: Option<&'a [u32]>,
    pub wk: Option<&'a [u32]>,
    pub wv: Option<&'a [u32]>,
    pub wo: Option<&'a [u32]>,
    pub w_gate: Option<&'a [u32]>,
    pub w_down: Option<&'a [u32]>,
    pub w_up: Option<&'a [u32]>,
}

/// The activation quantization of each linear of a block.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockActs<'a> {
    pub wq: Option<ActQuant<'a>>,
    pub wk: Option<ActQuant<'a>>,
    pub wv: Option<ActQuant<'a>>,
    pub wo: Option<ActQuant<'a>>,
    pub w_gate: Option<ActQuant<'a>>,
    pub w_down: Option<ActQuant<'a>>,
    pub w_up: Option<ActQuant<'a>>,
}

impl<'a> Model<'a> {
    /// Parses (with tensor checksums) and validates a model image.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Model<'a>, RuntimeError> {
        Self::from_bytes_with(bytes, ParseOptions::default())
    }

    pub fn from_bytes_with(bytes: &'a [u8], opts: ParseOptions) -> Result<Model<'a>, RuntimeError> {
        let eqf = Eqf::parse_with(bytes, opts)?;
        let m = Model { eqf, cfg: *eqf.config() };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        if self.cfg.online_hadamard() && !edgeq_kernels::hadamard::supported(self.cfg.hidden_dim as usize) {
            return Err(FormatError::BadConfig("online Hadamard set, but hidden_dim has no Hadamard transform in this runtime").into());
        }
        self.tok_embd()?;
        self.output_norm()?;
        self.classifier()?;
        for l in 0..self.cfg.n_layers as usize {
            let _b = self.block(l)?;
            #[cfg(feature = "act-quant")]
            Self::check_acts(&_b)?;
        }
        Ok(())
    }

    /// Activation modes the runtime can run: int8 modes need integer
    /// weights; FP8 modes round the shared input of q/k/v (gate/up) once, so
    /// each group must agree.
    #[cfg(feature = "act-quant")]
    fn check_acts(b: &Block<'_>) -> Result<(), RuntimeError> {
        let mode = |a: Option<ActQuant<'_>>| a.map(|a| a.mode);
        let fp8 = |a: Option<ActQuant<'_>>| matches!(mode(a), Some(ActMode::Fp8Token | ActMode::Fp8Group128));
        let a = &b.act;
        let qkv_ok = mode(a.wq) == mode(a.wk) && mode(a.wq) == mode(a.wv);
        if (fp8(a.wq) || fp8(a.wk) || fp8(a.wv)) && !qkv_ok || (fp8(a.w_gate) || fp8(a.w_up)) && mode(a.w_gate) != mode(a.w_up) {
            return Err(FormatError::BadActQuant("FP8 activation modes must be the same for q/k/v and for gate/up").into());
        }
        for (w, a) in [
            (b.wq, a.wq),
            (b.wk, a.wk),
            (b.wv, a.wv),
            (b.wo, a.wo),
            (b.w_gate, a.w_gate),
            (b.w_down, a.w_down),
            (b.w_up, a.w_up),
        ] {
            if matches!(mode(a), Some(ActMode::Int8Token | ActMode::LlmInt8 | ActMode::Int4Token)) && !w.scheme().is_int() {
                return Err(FormatError::BadActQuant("int8 activation modes need integer (Q8/Q4) weights").into());
            }
        }
        Ok(())
    }

    fn vector(&self, role: TensorRole, layer: u16, n: u32) -> Result<&'a [f32], RuntimeError> {
        let v = self.eqf.tensor(role, layer, 1, n)?;
        if v.scheme() != Scheme::F32 {
            let t = self.eqf.find(role, layer).map(|t| t.tensor_name());
            return Err(FormatError::SchemeNotAllowed {
                tensor: t.unwrap_or(edgeq_core::error::TensorName([0; 48])),
            }
            .into());
        }
        Ok(v.as_f32())
    }

    pub fn tok_embd(&self) -> Result<TensorView<'a>, RuntimeError> {
        Ok(self
            .eqf
            .tensor(TensorRole::TokEmbd, GLOBAL_LAYER, self.cfg.vocab_size, self.cfg.dim)?)
    }
    pub fn output_norm(&self) -> Result<&'a [f32], RuntimeError> {
        self.vector(TensorRole::OutputNorm, GLOBAL_LAYER, self.cfg.dim)
    }
    /// The classifier: `output`, or the token embedding when tied.
    pub fn classifier(&self) -> Result<TensorView<'a>, RuntimeError> {
        if self.cfg.tied_embeddings() {
            self.tok_embd()
        } else {
            Ok(self
                .eqf
                .tensor(TensorRole::Output, GLOBAL_LAYER, self.cfg.vocab_size, self.cfg.dim)?)
        }
    }

    pub fn block(&self, l: usize) -> Result<Block<'a>, RuntimeError> {
        let c = &self.cfg;
        let l16 = l as u16;
        let (dim, qd, kvd, hid) = (c.dim, c.q_dim() as u32, c.kv_dim() as u32, c.hidden_dim);
        let lin = |role, rows, cols| self.eqf.tensor(role, l16, rows, cols);
        let bias = |role, n| {
            if c.qkv_bias() {
                self.vector(role, l16, n).map(Some)
            } else {
                Ok(None)
            }
        };
        // Without `act-quant` the records are not used: f32 activations, as a 1.0 reader.
        #[cfg(not(feature = "act-quant"))]
        let act = BlockActs::default();
        #[cfg(feature = "act-quant")]
        let act = |role| self.eqf.act_quant(role, l16);
        #[cfg(feature = "act-quant")]
        let act = BlockActs {
            wq: act(TensorRole::Wq),
            wk: act(TensorRole::Wk),
            wv: act(TensorRole::Wv),
            wo: act(TensorRole::Wo),
            w_gate: act(TensorRole::WGate),
            w_down: act(TensorRole::WDown),
            w_up: act(TensorRole::WUp),
        };
        #[cfg(not(feature = "input-perm"))]
        let perm = BlockPerms::default();
        #[cfg(feature = "input-perm")]
        let perm = |role| self.eqf.input_perm(role, l16);
        #[cfg(feature = "input-perm")]
        let perm = BlockPerms {
            wq: perm(TensorRole::Wq),
            wk: perm(TensorRole::Wk),
            wv: perm(TensorRole::Wv),
            wo: perm(TensorRole::Wo),
            w_gate: perm(TensorRole::WGate),
            w_down: perm(TensorRole::WDown),
            w_up: perm(TensorRole::WUp),
        };
        Ok(Block {
            act,
            perm,
            attn_norm: self.vector(TensorRole::AttnNorm, l16, dim)?,
            wq: lin(TensorRole::Wq, qd, dim)?,
            wk: lin(TensorRole::Wk, kvd, dim)?,
            wv: lin(TensorRole::Wv, kvd, dim)?,
            wo: lin(TensorRole::Wo, dim, qd)?,
            bq: bias(TensorRole::Bq, qd)?,
            bk: bias(TensorRole::Bk, kvd)?,
            bv: bias(TensorRole::Bv, kvd)?,
            ffn_norm: self.vector(TensorRole::FfnNorm, l16, dim)?,
            w_gate: lin(TensorRole::WGate, hid, dim)?,
            w_down: lin(TensorRole::WDown, dim, hid)?,
            w_up: lin(TensorRole::WUp, hid, dim)?,
        })
    }
}
