package wasm

import (
	"fmt"

	"github.com/dust-run/dust/internal/machine"
)

// A module is untrusted, and wazero sizes allocations in its decoder, its
// compiler and every instance from what the module declares, not from what
// it contains: 42 bytes declaring four billion locals cost a 32 GiB
// allocation, a table declared with 100 million entries costs 800 MB per
// instance. So everything a module declares that costs host memory is
// read here, by our own bounds-checked reader, and held to the bounds
// below before wazero sees the bytes. The bounds are generous multiples of
// what real programs declare (docs/wasm.md has the measured figures).
const (
	// maxFuncLocals is the most locals one function may declare: the
	// limit of the WebAssembly JS API, which browsers enforce too.
	maxFuncLocals = 50_000
	// maxLocals bounds all functions' locals together: wazero's compiler
	// allocates ≈ 28 bytes a local.
	maxLocals = 1_000_000
	// maxFuncs counts imported and defined functions: ≈ 240 bytes of
	// compilation each, 80 of them kept for the app's lifetime.
	maxFuncs = 100_000
	// maxTypes counts function types, those in recursion groups included.
	maxTypes = 100_000
	// maxParams bounds a function type's parameters and, separately, its
	// results (the JS API's limit, too).
	maxParams  = 1_000
	maxImports = 100_000
	maxExports = 100_000
	// maxGlobals: every instance allocates each of them.
	maxGlobals = 20_000
	maxTables  = 100
	// maxMemories is generous: wazero runs modules with one memory only,
	// and refuses more when it validates; the bound is on our reader.
	maxMemories = 100
	// maxElemSegments bounds element segments; their entries are bounded
	// with the tables (tableEntryBytes).
	maxElemSegments = 100_000
	maxDataSegments = 100_000
	// maxCodeBytes bounds the code section, what the compiler works
	// through; maxBodyBytes one function's body, whose compilation holds
	// per-instruction state all at once.
	maxCodeBytes = 128 << 20
	maxBodyBytes = 8 << 20
	// maxDepth bounds the nesting of blocks, loops, ifs and try_tables in a
	// function: wazero's compiler keeps ≈ 3 KB per level and its time
	// grows with the square of the depth (10,000 levels: 0.3 s).
	maxDepth = 10_000
	// tableEntryBytes is what one table entry costs an instance (a
	// pointer). Tables together may hold at most the memory limit's worth
	// of entries, imported tables and element segments alike.
	tableEntryBytes = 8
)

// limitsExport names the function Dust adds to a module whose tables it
// capped, which reports whether a capped table is full (see capTables).
const limitsExport = "dust.limits.tables_full"

// moduleFigures are what a module declares that costs the host memory.
type moduleFigures struct {
	types, imports, funcs, exports, globals int
	maxParams, maxResults                   int
	tables                                  []binTable // imported ones first
	importedTables                          int
	memories                                []binLimits // imported ones first
	elemSegments                            int
	elemEntries                             uint64
	dataSegments                            int
	dataBytes                               uint64
	codeBytes                               int
	maxBody, maxBodyFunc                    int
	locals                                  uint64
	maxLocals                               uint64
	maxLocalsFunc                           int
	maxDepth, maxDepthFunc                  int
	// partial counts function bodies whose walk stopped at an opcode the
	// walker does not know: wazero, which knows no more opcodes than the
	// walker with the features Dust enables, refuses those bodies there.
	partial int
}

// binTable is a table as the table section (or an import) declares it.
type binTable struct {
	// head is the encoding before the limits: the optional 0x40 0x00 of a
	// table with an initialiser, and the reference type.
	head []byte
	lim  binLimits
	// init is the initialiser expression, with its end opcode, if any.
	init []byte
}

// limitModule holds image to the bounds that limits imply and returns the
// binary to compile: image itself, or a rewrite of it whose tables cannot
// grow past the table budget. Anything refused is a machine.ErrBadImage
// naming the bound. A binary without the wasm header is passed on for
// wazero to explain. capped reports a rewrite that added limitsExport.
func limitModule(image []byte, memLimit uint64) ([]byte, bool, error) {
	if err := checkCounts(image); err != nil {
		return nil, false, fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	m, err := parseBinary(image)
	if err != nil {
		// No wasm header: wazero's message (and the component hint) say
		// what it is; checkCounts refused every other framing error.
		return image, false, nil
	}
	f, err := inspect(m)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	if err := f.check(memLimit); err != nil {
		return nil, false, fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	out, capped, err := capTables(m, f, memLimit/tableEntryBytes)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	if out == nil {
		return image, false, nil
	}
	return out, capped, nil
}

// check compares the figures with the bounds.
func (f *moduleFigures) check(memLimit uint64) error {
	counts := []struct {
		what  string
		n     int
		limit int
	}{
		{"function types", f.types, maxTypes},
		{"imports", f.imports, maxImports},
		{"functions", f.funcs, maxFuncs},
		{"exports", f.exports, maxExports},
		{"globals", f.globals, maxGlobals},
		{"tables", len(f.tables), maxTables},
		{"element segments", f.elemSegments, maxElemSegments},
		{"data segments", f.dataSegments, maxDataSegments},
		{"bytes of code", f.codeBytes, maxCodeBytes},
	}
	for _, c := range counts {
		if c.n > c.limit {
			return fmt.Errorf("the module declares %d %s; the limit is %d", c.n, c.what, c.limit)
		}
	}
	switch {
	case f.maxParams > maxParams:
		return fmt.Errorf("a function type has %d parameters; the limit is %d", f.maxParams, maxParams)
	case f.maxResults > maxParams:
		return fmt.Errorf("a function type has %d results; the limit is %d", f.maxResults, maxParams)
	case f.maxLocals > maxFuncLocals:
		return fmt.Errorf("function %d declares %d locals; the limit is %d", f.maxLocalsFunc, f.maxLocals, maxFuncLocals)
	case f.locals > maxLocals:
		return fmt.Errorf("the module's functions declare %d locals in all; the limit is %d", f.locals, maxLocals)
	case f.maxBody > maxBodyBytes:
		return fmt.Errorf("function %d has a %d-byte body; the limit is %d", f.maxBodyFunc, f.maxBody, maxBodyBytes)
	case f.maxDepth > maxDepth:
		return fmt.Errorf("function %d nests blocks %d deep; the limit is %d", f.maxDepthFunc, f.maxDepth, maxDepth)
	}
	for i, l := range f.memories {
		// Checked here rather than on the compiled module because a memory
		// need not be exported, and an instance whose initial memory the
		// allocator refuses makes wazero panic.
		if need := uint64(l.min) * pageSize; need > memLimit {
			return fmt.Errorf("memory %d starts at %d KiB, over the %d KiB limit", i, need>>10, memLimit>>10)
		}
	}
	budget := memLimit / tableEntryBytes
	var entries uint64
	for _, t := range f.tables {
		entries += uint64(t.lim.min)
	}
	if entries > budget {
		return fmt.Errorf("the module's tables start with %d entries; the limit is %d (%d bytes each within the %d KiB memory limit)", entries, budget, tableEntryBytes, memLimit>>10)
	}
	if f.elemEntries > budget {
		return fmt.Errorf("the module's element segments hold %d entries; the limit is %d (%d bytes each within the %d KiB memory limit)", f.elemEntries, budget, tableEntryBytes, memLimit>>10)
	}
	if f.dataBytes > memLimit {
		return fmt.Errorf("the module's data segments hold %d bytes; the limit is %d (the memory limit)", f.dataBytes, memLimit)
	}
	return nil
}

// inspect reads every section wazero's decoder sizes an allocation from,
// checking each count and length against the bytes that follow, and walks
// every function body.
func inspect(m *binModule) (*moduleFigures, error) {
	f := &moduleFigures{}
	var funcImports int
	for _, s := range m.sections {
		r := &reader{b: s.body}
		var err error
		switch s.id {
		case secCustom:
			err = inspectCustom(r)
		case secType:
			err = f.inspectTypes(r)
		case secImport:
			funcImports, err = f.inspectImports(r)
		case secFunction:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				r.u32()
			}
			f.funcs += int(n)
			err = r.end()
		case secTable:
			n := r.u32()
			if len(f.tables)+int(n) > maxTables {
				return nil, fmt.Errorf("the module declares %d tables; the limit is %d", len(f.tables)+int(n), maxTables)
			}
			for i := uint32(0); i < n && r.err == nil; i++ {
				f.tables = append(f.tables, r.table())
			}
			err = r.end()
		case secMemory:
			n := r.u32()
			if len(f.memories)+int(n) > maxMemories {
				return nil, fmt.Errorf("the module declares %d memories; the limit is %d", len(f.memories)+int(n), maxMemories)
			}
			for i := uint32(0); i < n && r.err == nil; i++ {
				f.memories = append(f.memories, r.limits())
			}
			err = r.end()
		case secGlobal:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				r.valType()
				r.byte()
				r.constExpr()
			}
			f.globals += int(n)
			err = r.end()
		case secExport:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				r.name()
				r.byte()
				r.u32()
			}
			f.exports = int(n)
			err = r.end()
		case secElement:
			err = f.inspectElements(r)
		case secCode:
			err = f.inspectCode(r, funcImports)
		case secData:
			n := r.u32()
			for i := uint32(0); i < n && r.err == nil; i++ {
				switch r.u32() {
				case 0:
					r.constExpr()
				case 1:
				case 2:
					r.u32()
					r.constExpr()
				default:
					r.fail("bad data segment kind")
				}
				f.dataBytes += uint64(len(r.bytes(r.u32())))
			}
			f.dataSegments = int(n)
			err = r.end()
		}
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// inspectCustom checks the lengths in a custom section wazero decodes: its
// name, and the name section's maps, which wazero allocates by their
// counts.
func inspectCustom(r *reader) error {
	if r.name() != "name" || r.err != nil {
		return r.err
	}
	for r.off < len(r.b) && r.err == nil {
		id := r.byte()
		sub := &reader{b: r.bytes(r.u32())}
		switch id {
		case 0:
			sub.name()
		case 1:
			sub.nameMap()
		case 2:
			n := sub.count(3)
			for i := uint32(0); i < n && sub.err == nil; i++ {
				sub.u32()
				sub.nameMap()
			}
		default:
			continue
		}
		if err := sub.end(); err != nil {
			return fmt.Errorf("name section: %w", err)
		}
	}
	return r.err
}

func (f *moduleFigures) inspectTypes(r *reader) error {
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		group := uint32(1)
		if r.off < len(r.b) && r.b[r.off] == 0x4e {
			r.off++
			group = r.count(3)
		}
		for j := uint32(0); j < group && r.err == nil; j++ {
			if r.byte() != 0x60 {
				r.fail("not a function type")
			}
			params := r.count(1)
			for k := uint32(0); k < params && r.err == nil; k++ {
				r.valType()
			}
			results := r.count(1)
			for k := uint32(0); k < results && r.err == nil; k++ {
				r.valType()
			}
			f.maxParams = max(f.maxParams, int(params))
			f.maxResults = max(f.maxResults, int(results))
			f.types++
		}
	}
	return r.end()
}

func (f *moduleFigures) inspectImports(r *reader) (funcs int, err error) {
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.name()
		r.name()
		switch r.byte() {
		case kindFunc:
			r.u32()
			funcs++
		case kindTable:
			if len(f.tables) == maxTables {
				return 0, fmt.Errorf("the module imports more than %d tables; the limit is %d", maxTables, maxTables)
			}
			f.tables = append(f.tables, r.table())
			f.importedTables++
		case kindMemory:
			if len(f.memories) == maxMemories {
				return 0, fmt.Errorf("the module imports more than %d memories; the limit is %d", maxMemories, maxMemories)
			}
			f.memories = append(f.memories, r.limits())
		case kindGlobal:
			r.valType()
			r.byte()
			f.globals++
		case kindTag:
			r.byte()
			r.u32()
		default:
			r.fail("unknown import kind")
		}
	}
	f.imports = int(n)
	f.funcs += funcs
	return funcs, r.end()
}

func (f *moduleFigures) inspectElements(r *reader) error {
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		kind := r.u32()
		if kind > 7 {
			r.fail("bad element segment kind")
			break
		}
		if kind&1 == 0 { // active: an offset, after a table index for 2 and 6
			if kind&2 != 0 {
				r.u32()
			}
			r.constExpr()
		}
		if kind&3 != 0 { // an element kind (0x00) or a reference type
			if kind&4 != 0 {
				r.valType()
			} else {
				r.byte()
			}
		}
		entries := r.count(1)
		for j := uint32(0); j < entries && r.err == nil; j++ {
			if kind&4 != 0 {
				r.constExpr()
			} else {
				r.u32()
			}
		}
		f.elemEntries += uint64(entries)
	}
	f.elemSegments = int(n)
	return r.end()
}

func (f *moduleFigures) inspectCode(r *reader, funcImports int) error {
	f.codeBytes = len(r.b)
	n := r.u32()
	for i := uint32(0); i < n && r.err == nil; i++ {
		body := r.bytes(r.u32())
		if r.err != nil {
			break
		}
		fn := funcImports + int(i)
		if len(body) > f.maxBody {
			f.maxBody, f.maxBodyFunc = len(body), fn
		}
		br := &reader{b: body}
		var locals uint64
		decls := br.count(2)
		for j := uint32(0); j < decls && br.err == nil; j++ {
			locals += uint64(br.u32())
			br.valType()
		}
		if br.err != nil {
			return fmt.Errorf("function %d: %w", fn, br.err)
		}
		f.locals += locals
		if locals > f.maxLocals {
			f.maxLocals, f.maxLocalsFunc = locals, fn
		}
		depth, complete, err := walkBody(body[br.off:])
		if err != nil {
			return fmt.Errorf("function %d: %w", fn, err)
		}
		if !complete {
			f.partial++
		}
		if depth > f.maxDepth {
			f.maxDepth, f.maxDepthFunc = depth, fn
		}
	}
	return r.end()
}

// count reads a vector's length, which may not claim more entries than
// the bytes that follow can hold at size bytes an entry at least.
func (r *reader) count(size int) uint32 {
	n := r.u32()
	if r.err == nil && uint64(n)*uint64(size) > uint64(len(r.b)-r.off) {
		r.fail(fmt.Sprintf("a count of %d in %d bytes", n, len(r.b)-r.off))
		return 0
	}
	return n
}

// nameMap reads a name section map: index, name pairs.
func (r *reader) nameMap() {
	n := r.count(2)
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.u32()
		r.name()
	}
}

// valType reads a value type: one byte, or a reference type prefix and a
// heap type.
func (r *reader) valType() {
	if b := r.byte(); b == 0x63 || b == 0x64 {
		r.sleb(33)
	}
}

func (r *reader) table() binTable {
	start := r.off
	var t binTable
	hasInit := false
	if r.off < len(r.b) && r.b[r.off] == 0x40 {
		r.off++
		if r.byte() != 0 {
			r.fail("bad table prefix")
		}
		hasInit = true
	}
	r.valType()
	if r.err != nil {
		return t
	}
	t.head = r.b[start:r.off:r.off]
	t.lim = r.limits()
	if hasInit {
		t.init = r.constExpr()
	}
	return t
}

func encodeTables(ts []binTable) []byte {
	out := appendU32(nil, uint32(len(ts)))
	for _, t := range ts {
		out = append(out, t.head...)
		out = appendLimits(out, t.lim)
		out = append(out, t.init...)
	}
	return out
}

func appendLimits(out []byte, l binLimits) []byte {
	if l.hasMax {
		return appendU32(appendU32(append(out, 1), l.min), l.max)
	}
	return appendU32(append(out, 0), l.min)
}

// capTables gives the module's own tables maxima that keep all tables
// together within budget entries, and returns the binary to compile, nil
// if no table needs a new maximum.
// table.grow and table.fill are run-time instructions no declaration
// bounds: a table without a maximum grows by a 4-byte instruction to four
// billion entries (32 GiB). wazero refuses a grow past a table's maximum
// (table.grow returns -1, as the spec allows any grow to fail), so a
// maximum is the enforcement, costs nothing per request, and leaves every
// module that stays within its limits as it was: real toolchains declare
// tables of a fixed size (minimum = maximum), which are never rewritten.
// The room left above the initial sizes is shared equally by the tables
// that could grow past it. Imported tables cannot be capped here, but no
// host module Dust links exports one, so they never instantiate; their
// initial sizes still count against the budget.
//
// A module whose tables were capped also gets an exported function,
// limitsExport, that reports whether a capped table is full: a guest that
// traps after a refused table.grow ran out of memory, as after a refused
// memory.grow.
func capTables(m *binModule, f *moduleFigures, budget uint64) ([]byte, bool, error) {
	budget = min(budget, 1<<32-1)
	var used uint64
	for _, t := range f.tables {
		used += uint64(t.lim.min)
	}
	room := budget - used // check ensured used <= budget
	own := f.tables[f.importedTables:]
	var growth uint64
	growable := 0
	for _, t := range own {
		switch {
		case !t.lim.hasMax:
			growth += 1 << 32
			growable++
		case t.lim.max > t.lim.min:
			growth += uint64(t.lim.max - t.lim.min)
			growable++
		}
	}
	if growth <= room {
		return nil, false, nil
	}
	share := room / uint64(growable)
	type capped struct{ index, entries uint32 }
	var caps []capped
	ts := append([]binTable(nil), own...)
	for i, t := range ts {
		if !t.lim.hasMax || (t.lim.max > t.lim.min && uint64(t.lim.max-t.lim.min) > share) {
			ts[i].lim = binLimits{min: t.lim.min, max: t.lim.min + uint32(share), hasMax: true}
			caps = append(caps, capped{uint32(f.importedTables + i), ts[i].lim.max})
		}
	}
	es, err := m.exports()
	if err != nil {
		return nil, false, err
	}
	for _, e := range es {
		if e.name == limitsExport {
			return nil, false, fmt.Errorf("the module already exports %q", limitsExport)
		}
	}
	out := m.clone()
	out.setSection(secTable, encodeTables(ts))

	// () -> i32: 1 if any capped table is at its maximum.
	body := []byte{0, 0x41, 0}
	for _, c := range caps {
		body = appendU32(append(body, 0xfc, 16), c.index)             // table.size
		body = appendS64(append(body, 0x41), int64(int32(c.entries))) // i32.const
		body = append(body, 0x4f, 0x72)                               // i32.ge_u, i32.or
	}
	body = append(body, 0x0b)
	if err := appendEntry(out, secType, []byte{0x60, 0, 1, valI32}); err != nil {
		return nil, false, err
	}
	if err := appendEntry(out, secFunction, appendU32(nil, uint32(f.types))); err != nil {
		return nil, false, err
	}
	if err := appendEntry(out, secCode, append(appendU32(nil, uint32(len(body))), body...)); err != nil {
		return nil, false, err
	}
	exp := encodeExports([]binExport{{name: limitsExport, kind: kindFunc, idx: uint32(f.funcs)}})[1:]
	if err := appendEntry(out, secExport, exp); err != nil {
		return nil, false, err
	}
	return out.encode(), true, nil
}

// appendEntry adds entry at the end of the vector that is section id's
// body, creating the section if the module has none.
func appendEntry(m *binModule, id byte, entry []byte) error {
	body, ok := m.section(id)
	if !ok {
		m.setSection(id, append([]byte{1}, entry...))
		return nil
	}
	r := &reader{b: body}
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	out := appendU32(make([]byte, 0, len(body)+len(entry)+5), n+1)
	out = append(append(out, body[r.off:]...), entry...)
	m.setSection(id, out)
	return nil
}
