//! Counting imported routing into a count-only [`RoutingProfile`]: per-subject counts, the map
//! from an engine's layer numbering to the model's MoE layers, and what was skipped.
//!
//! Engines number layers three ways: every decoder layer with placeholders in the dense ones
//! (SGLang, older vLLM), MoE layers only (vLLM ≥ 0.21), or decoder indices of the MoE layers that
//! appear, 0- or 1-based (Megatron-LM, llama.cpp). [`LayerMap`] turns each into rows of the
//! profile and says in words what it did.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model_shape::RoutingShape;
use crate::model::info::layer_ranges;
use crate::profile::{ProfileSource, RoutingProfile, RoutingSignal, SubjectProfile};

/// Engine layer index → profile row (`None`: a dense layer's placeholder), and how it was
/// decided.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMap {
    pub rows: Vec<Option<usize>>,
    pub description: String,
}

impl LayerMap {
    /// For formats whose rows hold a fixed number of engine layers.
    pub fn for_layer_count(engine_layers: usize, shape: &RoutingShape) -> Result<Self, String> {
        let moe = &shape.moe_layers;
        if engine_layers == moe.len() {
            let description = if moe.len() == shape.num_layers {
                format!(
                    "{engine_layers} engine layers = the model's {} decoder layers, all MoE",
                    shape.num_layers
                )
            } else {
                format!(
                    "{engine_layers} engine layers = the model's {} MoE layers (decoder layers {})",
                    moe.len(),
                    layer_ranges(moe)
                )
            };
            return Ok(Self {
                rows: (0..engine_layers).map(Some).collect(),
                description,
            });
        }
        if engine_layers == shape.num_layers {
            let dense: Vec<usize> = (0..shape.num_layers).filter(|l| !moe.contains(l)).collect();
            return Ok(Self {
                rows: (0..engine_layers)
                    .map(|l| moe.iter().position(|&m| m == l))
                    .collect(),
                description: format!(
                    "{engine_layers} engine layers = all decoder layers; the placeholders of dense \
                     layer{} {} are ignored",
                    if dense.len() == 1 { "" } else { "s" },
                    layer_ranges(&dense)
                ),
            });
        }
        Err(format!(
            "{engine_layers} layers per token, but the model has {} decoder layers of which {} \
             are MoE",
            shape.num_layers,
            moe.len()
        ))
    }

    /// For formats that name each layer: `seen` are the engine's layer numbers. Decoder indices
    /// (0-based), then 1-based decoder numbers, then MoE-layer ordinals, whichever puts every
    /// number on a MoE layer.
    pub fn for_layer_numbers(seen: &BTreeSet<usize>, shape: &RoutingShape) -> Result<Self, String> {
        let moe = &shape.moe_layers;
        let max = seen.last().copied().unwrap_or(0);
        let build = |to_decoder: &dyn Fn(usize) -> Option<usize>, how: String| {
            let rows: Vec<Option<usize>> = (0..=max)
                .map(|n| to_decoder(n).and_then(|l| moe.iter().position(|&m| m == l)))
                .collect();
            seen.iter().all(|&n| rows[n].is_some()).then_some(Self {
                rows,
                description: how,
            })
        };
        let listed = layer_ranges(&seen.iter().copied().collect::<Vec<_>>());
        if let Some(m) = build(
            &Some,
            format!("engine layers {listed} = decoder layers (0-based)"),
        ) {
            return Ok(m);
        }
        if let Some(m) = build(
            &|n| n.checked_sub(1),
            format!(
                "engine layers {listed} = decoder layers {}, numbered from 1",
                {
                    let shifted: Vec<usize> = seen.iter().map(|n| n.saturating_sub(1)).collect();
                    layer_ranges(&shifted)
                }
            ),
        ) {
            return Ok(m);
        }
        if let Some(m) = build(
            &|n| moe.get(n).copied(),
            format!("engine layers {listed} = the model's MoE layers in order"),
        ) {
            return Ok(m);
        }
        Err(format!(
            "layer numbers {listed} do not match the model's MoE layers ({}, of {} decoder \
             layers), 0-based, 1-based or counted over MoE layers",
            layer_ranges(moe),
            shape.num_layers
        ))
    }
}

/// The layer map of a format whose rows hold a fixed number of engine layers: decided by the
/// first record, required of every later one.
#[derive(Debug, Default)]
pub struct FixedLayers(Option<(usize, LayerMap)>);

impl FixedLayers {
    /// The map for rows of `layers` engine layers.
    pub fn map(&mut self, layers: usize, shape: &RoutingShape) -> Result<&LayerMap, String> {
        match &mut self.0 {
            Some((l, _)) if *l != layers => Err(format!(
                "{layers} layers per token, but earlier records have {l}"
            )),
            Some((_, m)) => Ok(m),
            slot @ None => Ok(&slot
                .insert((layers, LayerMap::for_layer_count(layers, shape)?))
                .1),
        }
    }

    /// The map decided, if any record had rows.
    pub fn into_map(self) -> Option<LayerMap> {
        self.0.map(|(_, m)| m)
    }
}

/// One subject's counts while importing.
struct SubjectTally {
    name: String,
    sequences: u64,
    tokens: u64,
    /// Row-major `[profile row][expert]` (formats with a [`LayerMap`] up front).
    rows: Vec<u64>,
    /// Engine layer → counts and tokens (formats that name layers; mapped at the end).
    by_engine_layer: BTreeMap<usize, (Vec<u64>, u64)>,
}

/// Counts of imported routing, per subject.
pub struct Tally {
    shape: RoutingShape,
    subjects: Vec<SubjectTally>,
    index: HashMap<String, usize>,
    pub records: u64,
    pub skipped_positions: u64,
    /// Records the importer left out on purpose (e.g. Megatron's MTP block), with why.
    pub notes: Vec<String>,
}

impl Tally {
    pub fn new(shape: RoutingShape) -> Self {
        Self {
            shape,
            subjects: Vec::new(),
            index: HashMap::new(),
            records: 0,
            skipped_positions: 0,
            notes: Vec::new(),
        }
    }

    pub fn shape(&self) -> &RoutingShape {
        &self.shape
    }

    /// The index of subject `name`, added on first use.
    pub fn subject(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let rows = self.shape.moe_layers.len() * self.shape.num_experts;
        self.subjects.push(SubjectTally {
            name: name.to_string(),
            sequences: 0,
            tokens: 0,
            rows: vec![0; rows],
            by_engine_layer: BTreeMap::new(),
        });
        self.index.insert(name.to_string(), self.subjects.len() - 1);
        self.subjects.len() - 1
    }

    /// Starts one request's routing (a sequence, a record) of subject `name`; returns the
    /// subject's index.
    pub fn begin_request(&mut self, name: &str) -> usize {
        let subject = self.subject(name);
        self.subjects[subject].sequences += 1;
        self.records += 1;
        subject
    }

    /// Adds token positions given as `[position][engine layer][slot]` ids, flattened, with
    /// `map` from engine layers to rows. Ids below 0 are empty slots; a position with no id in
    /// any MoE layer (vLLM's prefix-cache hits, SGLang's padding) is skipped and counted as
    /// such. An id ≥ the model's experts is an error naming its position; the tally is then
    /// incomplete, and the import stops.
    pub fn add_positions(
        &mut self,
        subject: usize,
        ids: &[i32],
        slots: usize,
        map: &LayerMap,
    ) -> Result<(), BadExpert> {
        let n = self.shape.num_experts;
        let per_position = map.rows.len() * slots;
        if per_position == 0 {
            return Ok(());
        }
        let (mut tokens, mut skipped) = (0u64, 0u64);
        let counts = &mut self.subjects[subject].rows;
        for (position, row) in ids.chunks_exact(per_position).enumerate() {
            let mut any = false;
            for (layer_ids, target) in row.chunks_exact(slots).zip(&map.rows) {
                let Some(target) = *target else { continue };
                let base = target * n;
                for (slot, &id) in layer_ids.iter().enumerate() {
                    if id < 0 {
                        continue;
                    }
                    let e = id as usize;
                    if e >= n {
                        return Err(BadExpert {
                            position,
                            slot,
                            expert: e,
                        });
                    }
                    counts[base + e] += 1;
                    any = true;
                }
            }
            if any {
                tokens += 1;
            } else {
                skipped += 1;
            }
        }
        self.subjects[subject].tokens += tokens;
        self.skipped_positions += skipped;
        Ok(())
    }

    /// Adds per-expert counts to profile row `row` (counts of a layer mapped up front).
    pub fn add_row_counts(&mut self, subject: usize, row: usize, counts: &[u64]) {
        let n = self.shape.num_experts;
        let acc = &mut self.subjects[subject].rows[row * n..(row + 1) * n];
        acc.iter_mut().zip(counts).for_each(|(a, c)| *a += c);
    }

    /// Adds tokens counted outside [`Tally::add_positions`].
    pub fn add_tokens(&mut self, subject: usize, tokens: u64) {
        self.subjects[subject].tokens += tokens;
    }

    /// Adds one engine layer's choices: `ids` of `tokens` tokens (ids below 0 are empty).
    pub fn add_layer_ids(
        &mut self,
        subject: usize,
        engine_layer: usize,
        ids: impl IntoIterator<Item = i64>,
        tokens: u64,
    ) -> Result<(), usize> {
        let n = self.shape.num_experts;
        let (counts, layer_tokens) = self.subjects[subject]
            .by_engine_layer
            .entry(engine_layer)
            .or_insert_with(|| (vec![0; n], 0));
        for id in ids {
            if id < 0 {
                continue;
            }
            let e = id as usize;
            if e >= n {
                return Err(e);
            }
            counts[e] += 1;
        }
        *layer_tokens += tokens;
        Ok(())
    }

    /// Adds one engine layer's per-expert counts (`counts.len()` must be the model's experts).
    pub fn add_layer_counts(&mut self, subject: usize, engine_layer: usize, counts: &[u64]) {
        let n = self.shape.num_experts;
        let k = self.shape.top_k as u64;
        let (acc, tokens) = self.subjects[subject]
            .by_engine_layer
            .entry(engine_layer)
            .or_insert_with(|| (vec![0; n], 0));
        acc.iter_mut().zip(counts).for_each(|(a, c)| *a += c);
        *tokens += counts.iter().sum::<u64>() / k;
    }

    /// The engine layer numbers seen by [`Tally::add_layer_ids`] / [`Tally::add_layer_counts`].
    fn named_layers(&self) -> BTreeSet<usize> {
        self.subjects
            .iter()
            .flat_map(|s| s.by_engine_layer.keys().copied())
            .collect()
    }

    /// The profile, with `source` describing the import. Layers named by number are mapped
    /// now ([`LayerMap::for_layer_numbers`]); `map` is the up-front map, if the format had one.
    pub fn finish(
        self,
        format: &str,
        files: Vec<String>,
        map: Option<&LayerMap>,
    ) -> Result<RoutingProfile, String> {
        let named = self.named_layers();
        let late_map = if named.is_empty() {
            None
        } else {
            Some(LayerMap::for_layer_numbers(&named, &self.shape)?)
        };
        let layer_mapping = match (map, &late_map) {
            (_, Some(m)) | (Some(m), None) => m.description.clone(),
            (None, None) => "no routing found".to_string(),
        };
        let (l, n) = (self.shape.moe_layers.len(), self.shape.num_experts);
        let mut total_tokens = 0;
        let subjects: Vec<SubjectProfile> = self
            .subjects
            .into_iter()
            .map(|s| {
                let mut p = SubjectProfile::empty_with(&s.name, l, n, &[RoutingSignal::Count]);
                for (row, counts) in p.count.iter_mut().zip(s.rows.chunks_exact(n.max(1))) {
                    row.copy_from_slice(counts);
                }
                let mut layer_tokens = 0;
                if let Some(m) = &late_map {
                    for (engine_layer, (counts, tokens)) in &s.by_engine_layer {
                        if let Some(Some(row)) = m.rows.get(*engine_layer) {
                            p.count[*row]
                                .iter_mut()
                                .zip(counts)
                                .for_each(|(a, c)| *a += c);
                            layer_tokens = layer_tokens.max(*tokens);
                        }
                    }
                }
                p.tokens = s.tokens + layer_tokens;
                p.sequences = s.sequences;
                total_tokens += p.tokens;
                p
            })
            .collect();
        if total_tokens == 0 {
            return Err(format!(
                "no routed tokens found ({} records read, {} positions skipped)",
                self.records, self.skipped_positions
            ));
        }
        let mut profile = RoutingProfile::new(self.shape.profile_model(), subjects);
        profile.source = Some(ProfileSource {
            format: format.to_string(),
            files,
            records: self.records,
            tokens: total_tokens,
            skipped_positions: self.skipped_positions,
            layer_mapping,
        });
        Ok(profile)
    }
}

/// An expert id outside the model's experts, at `position` (token) and `slot` of a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BadExpert {
    pub position: usize,
    pub slot: usize,
    pub expert: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::Family;
    use crate::model::router::ScoreFn;

    /// 4 decoder layers, the first dense; 4 experts, top-2.
    fn shape() -> RoutingShape {
        RoutingShape {
            id: "m".into(),
            family: Family::DeepseekV3,
            num_layers: 4,
            moe_layers: vec![1, 2, 3],
            num_experts: 4,
            top_k: 2,
            score_fn: ScoreFn::Sigmoid,
            layout: None,
            attention_kinds: Vec::new(),
            layout_missing: None,
        }
    }

    #[test]
    fn layer_counts_map_all_layers_or_moe_layers() {
        let all = LayerMap::for_layer_count(4, &shape()).unwrap();
        assert_eq!(all.rows, vec![None, Some(0), Some(1), Some(2)]);
        assert!(
            all.description.contains("dense layer 0 are ignored"),
            "{}",
            all.description
        );
        let moe = LayerMap::for_layer_count(3, &shape()).unwrap();
        assert_eq!(moe.rows, vec![Some(0), Some(1), Some(2)]);
        let err = LayerMap::for_layer_count(5, &shape()).unwrap_err();
        assert!(err.contains("4 decoder layers of which 3 are MoE"), "{err}");
    }

    #[test]
    fn layer_numbers_0_based_1_based_or_ordinal() {
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        let zero = LayerMap::for_layer_numbers(&set(&[1, 2, 3]), &shape()).unwrap();
        assert_eq!(zero.rows, vec![None, Some(0), Some(1), Some(2)]);
        let one = LayerMap::for_layer_numbers(&set(&[2, 3, 4]), &shape()).unwrap();
        assert_eq!(one.rows[2..], [Some(0), Some(1), Some(2)]);
        assert!(
            one.description.contains("numbered from 1"),
            "{}",
            one.description
        );
        let ordinal = LayerMap::for_layer_numbers(&set(&[0, 1]), &shape()).unwrap();
        assert_eq!(ordinal.rows, vec![Some(0), Some(1)]);
        assert!(LayerMap::for_layer_numbers(&set(&[9]), &shape()).is_err());
    }

    #[test]
    fn positions_count_chosen_experts_and_skip_empty_positions() {
        let mut t = Tally::new(shape());
        let s = t.subject("law");
        let map = LayerMap::for_layer_count(4, &shape()).unwrap();
        // Two positions × 4 engine layers × 2 slots; layer 0 is a dense placeholder (0s).
        #[rustfmt::skip]
        let ids = [
            0, 0,  1, 2,  3, 0,  1, 1,
            -1, -1,  -1, -1,  -1, -1,  -1, -1,
        ];
        t.add_positions(s, &ids, 2, &map).unwrap();
        assert_eq!(t.skipped_positions, 1);
        let p = t.finish("vllm", vec!["f".into()], Some(&map)).unwrap();
        let law = p.subject("law").unwrap();
        assert_eq!(law.tokens, 1);
        assert_eq!(
            law.count,
            vec![vec![0, 1, 1, 0], vec![1, 0, 0, 1], vec![0, 2, 0, 0]]
        );
        assert!(p.is_count_only());
        assert_eq!(p.source.unwrap().skipped_positions, 1);

        let mut t = Tally::new(shape());
        let s = t.subject("law");
        let bad = [0, 0, 1, 9, 0, 0, 0, 0];
        assert_eq!(
            t.add_positions(s, &bad, 2, &map).unwrap_err(),
            BadExpert {
                position: 0,
                slot: 1,
                expert: 9
            }
        );
    }

    #[test]
    fn named_layers_are_mapped_at_the_end() {
        let mut t = Tally::new(shape());
        let s = t.subject("code");
        // 1-based layers 2..=4, 3 tokens each at top-2.
        for layer in 2..=4 {
            t.add_layer_ids(s, layer, [0, 1, 0, 2, 3, -1], 3).unwrap();
        }
        t.add_layer_counts(s, 4, &[2, 0, 0, 0]);
        assert_eq!(t.add_layer_ids(s, 2, [7], 1).unwrap_err(), 7);
        let p = t.finish("megatron", vec![], None).unwrap();
        let code = p.subject("code").unwrap();
        assert_eq!(code.count[0], vec![2, 1, 1, 1]);
        assert_eq!(code.count[2], vec![4, 1, 1, 1]);
        // Layer 4 saw 3 tokens of ids and 2 / top-2 = 1 token of counts.
        assert_eq!(code.tokens, 4);
        assert!(p.source.unwrap().layer_mapping.contains("numbered from 1"));
    }
}
