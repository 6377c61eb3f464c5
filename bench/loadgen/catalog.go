package loadgen

// The synthetic retailer's assortment, stores and customer geography. The
// categories are exactly the category filters of the label catalogue
// (services/tags/catalog.yaml), prices are list prices in fen (CNY minor
// units) and brands are lower-case single words, as POS back ends send them.

type product struct {
	sku   string
	brand string
	price int64 // fen
}

type category struct {
	name     string
	weight   float64 // how often a basket line falls in the category
	maxQty   int     // most units of one line of a cheap product
	products []product
}

// Category indexes of the categories only some households buy.
const (
	catBaby = 11
	catPet  = 12
)

var categories = []category{
	{"coffee", 7, 3, []product{
		{"COF-SATURNBIRD-PODS-12", "saturnbird", 6900}, {"COF-NESCAFE-GOLD-100G", "nescafe", 5990},
		{"COF-STARBUCKS-BEANS-250G", "starbucks", 8800}, {"COF-LAVAZZA-ORO-250G", "lavazza", 9900},
		{"COF-HOUSE-AMERICANO", "house", 1200}, {"COF-HOUSE-LATTE", "house", 1800}, {"COF-UCC-RTD-185ML", "ucc", 650},
	}},
	{"tea", 5, 3, []product{
		{"TEA-LIPTON-YELLOW-100", "lipton", 3290}, {"TEA-CHAGEE-JASMINE", "chagee", 1800},
		{"TEA-ANXI-TIEGUANYIN-250G", "anxi", 12800}, {"TEA-XIHU-LONGJING-200G", "xihu", 26800},
		{"TEA-ITOEN-OOLONG-500ML", "itoen", 590}, {"TEA-MENGHAI-PUER-357G", "menghai", 16800},
	}},
	{"bakery", 9, 4, []product{
		{"BAK-HOUSE-CROISSANT", "house", 890}, {"BAK-HOUSE-TOAST", "house", 1290}, {"BAK-TOLY-CUSTARD-PIE", "toly", 1990},
		{"BAK-HOUSE-EGG-TART", "house", 1200}, {"BAK-DALIYUAN-BREAD", "daliyuan", 1590}, {"BAK-HOUSE-BAGEL", "house", 990},
	}},
	{"dairy", 11, 6, []product{
		{"DAI-MENGNIU-MILK-1L", "mengniu", 1390}, {"DAI-YILI-ANMUXI-12", "yili", 6990}, {"DAI-BRIGHT-YOGURT-200G", "bright", 890},
		{"DAI-JUNLEBAO-YOGURT", "junlebao", 790}, {"DAI-ANCHOR-BUTTER-227G", "anchor", 2890}, {"DAI-TERUNSU-MILK-12", "mengniu", 6590},
	}},
	{"fresh", 14, 4, []product{
		{"FRE-HOUSE-APPLE-1KG", "house", 1590}, {"FRE-HOUSE-BANANA-1KG", "house", 890}, {"FRE-HOUSE-PORK-500G", "house", 2990},
		{"FRE-HOUSE-SALMON-300G", "house", 6900}, {"FRE-HOUSE-BOKCHOY-500G", "house", 490}, {"FRE-HOUSE-EGGS-10", "house", 1690},
		{"FRE-HOUSE-CHICKEN-1KG", "house", 3290}, {"FRE-HOUSE-SALAD-BOWL", "house", 1990},
	}},
	{"snacks", 11, 5, []product{
		{"SNK-3SQUIRRELS-NUTS-750G", "threesquirrels", 5990}, {"SNK-LAYS-ORIGINAL-70G", "lays", 850},
		{"SNK-OISHI-PRAWN-40G", "oishi", 650}, {"SNK-WANTWANT-RICE-520G", "wantwant", 1290}, {"SNK-OREO-ORIGINAL", "oreo", 990},
		{"SNK-BESTORE-BEEF-100G", "bestore", 3990}, {"SNK-DOVE-CHOC-84G", "dove", 1590},
	}},
	{"beverages", 12, 6, []product{
		{"BEV-NONGFU-WATER-550ML", "nongfu", 200}, {"BEV-COKE-330ML-6", "cocacola", 1890}, {"BEV-GENKI-SODA-480ML", "genkiforest", 550},
		{"BEV-WAHAHA-AD-4", "wahaha", 390}, {"BEV-REDBULL-250ML", "redbull", 650}, {"BEV-VITASOY-250ML", "vitasoy", 450},
		{"BEV-NONGFU-ORIENTAL-500ML", "nongfu", 590},
	}},
	{"alcohol", 4, 6, []product{
		{"ALC-TSINGTAO-500ML", "tsingtao", 790}, {"ALC-SNOW-500ML-6", "snow", 3290}, {"ALC-BUDWEISER-500ML-6", "budweiser", 4590},
		{"ALC-MOUTAI-FEITIAN-500ML", "moutai", 299900}, {"ALC-WULIANGYE-500ML", "wuliangye", 109900},
		{"ALC-CHANGYU-CABERNET", "changyu", 12800}, {"ALC-RIO-COCKTAIL-330ML", "rio", 990},
	}},
	{"household", 6, 3, []product{
		{"HOU-VINDA-TISSUE-10", "vinda", 3490}, {"HOU-BLUEMOON-DETERGENT-3KG", "bluemoon", 4590}, {"HOU-TIDE-PODS-52", "tide", 5990},
		{"HOU-MRMUSCLE-CLEANER", "mrmuscle", 2290}, {"HOU-HOUSE-TRASH-BAGS", "house", 1290}, {"HOU-LOCKLOCK-BOX-3", "locklock", 5900},
	}},
	{"personal_care", 5, 3, []product{
		{"PER-COLGATE-TOOTHPASTE", "colgate", 1590}, {"PER-HS-SHAMPOO-750ML", "headshoulders", 5990}, {"PER-SAFEGUARD-SOAP-3", "safeguard", 890},
		{"PER-DARLIE-TOOTHPASTE", "darlie", 1890}, {"PER-GILLETTE-BLADES-4", "gillette", 8990}, {"PER-WHISPER-PADS", "whisper", 3290},
	}},
	{"beauty", 3, 2, []product{
		{"BEA-LOREAL-SERUM-30ML", "loreal", 29900}, {"BEA-PERFECTDIARY-LIPSTICK", "perfectdiary", 8900},
		{"BEA-PROYA-ESSENCE-30ML", "proya", 25900}, {"BEA-ESTEELAUDER-ANR-50ML", "esteelauder", 75000},
		{"BEA-WINONA-CREAM-50G", "winona", 26800}, {"BEA-HOUSE-SHEET-MASK-10", "house", 4990},
	}},
	{"baby", 2, 3, []product{ // catBaby
		{"BAB-FEIHE-FORMULA-800G", "feihe", 32800}, {"BAB-PAMPERS-L-52", "pampers", 15900}, {"BAB-HUGGIES-M-64", "huggies", 14900},
		{"BAB-BEINGMATE-PUREE", "beingmate", 1890}, {"BAB-HOUSE-WIPES-80", "house", 2590},
	}},
	{"pet", 2, 4, []product{ // catPet
		{"PET-ROYALCANIN-CAT-2KG", "royalcanin", 22900}, {"PET-PEDIGREE-DOG-1.5KG", "pedigree", 6900},
		{"PET-WHISKAS-POUCH-85G", "whiskas", 450}, {"PET-HOUSE-CAT-LITTER-10L", "house", 3990}, {"PET-HOUSE-DOG-CHEW", "house", 1590},
	}},
	{"electronics", 0.7, 1, []product{
		{"ELE-XIAOMI-POWERBANK-10K", "xiaomi", 9900}, {"ELE-ANKER-CHARGER-65W", "anker", 12900},
		{"ELE-HUAWEI-FREEBUDS", "huawei", 69900}, {"ELE-XIAOMI-BAND-8", "xiaomi", 24900}, {"ELE-HOUSE-USB-C-CABLE", "house", 2990},
	}},
	{"apparel", 1, 2, []product{
		{"APP-HOUSE-TEE", "house", 7900}, {"APP-ANTA-SOCKS-3", "anta", 3900}, {"APP-LINING-CAP", "lining", 12900},
		{"APP-HOUSE-UMBRELLA", "house", 4990}, {"APP-HOUSE-SLIPPERS", "house", 2990},
	}},
	{"frozen", 6, 4, []product{
		{"FRZ-SANQUAN-DUMPLINGS-1KG", "sanquan", 2490}, {"FRZ-SYNEAR-TANGYUAN-500G", "synear", 1590},
		{"FRZ-WANCHAI-WONTON-720G", "wanchaiferry", 3290}, {"FRZ-HAAGENDAZS-PINT", "haagendazs", 3900},
		{"FRZ-HOUSE-SHRIMP-500G", "house", 5990}, {"FRZ-ZHONGXUEGAO-CONE", "zhongxuegao", 2000},
	}},
	{"health", 2, 2, []product{
		{"HEA-BYHEALTH-VITC-100", "byhealth", 9800}, {"HEA-SWISSE-FISHOIL-200", "swisse", 19800},
		{"HEA-CENTRUM-MULTI-100", "centrum", 15800}, {"HEA-TONGRENTANG-GOJI-250G", "tongrentang", 4990},
		{"HEA-YUNNANBAIYAO-BANDAGE", "yunnanbaiyao", 1290},
	}},
}

// Categories are the basket categories the generator uses, in catalogue
// order.
func Categories() []string {
	out := make([]string, len(categories))
	for i, c := range categories {
		out[i] = c.name
	}
	return out
}

type city struct {
	name   string // pinyin, lower case, as the label catalogue expects
	code   string // store id prefix
	stores int
	weight float64
}

var cities = []city{
	{"shanghai", "SH", 8, 28}, {"beijing", "BJ", 6, 15}, {"hangzhou", "HZ", 4, 9}, {"shenzhen", "SZ", 4, 8},
	{"guangzhou", "GZ", 4, 8}, {"chengdu", "CD", 3, 7}, {"nanjing", "NJ", 3, 6}, {"suzhou", "SU", 3, 5},
	{"wuhan", "WH", 2, 4}, {"xian", "XA", 2, 3}, {"chongqing", "CQ", 2, 3}, {"ningbo", "NB", 1, 2},
	{"xiamen", "XM", 1, 1.5}, {"wuxi", "WX", 1, 1.5}, {"zunyi", "ZY", 1, 1},
}

// TabletsPerStore is how many shared tablets each store has.
const TabletsPerStore = 2

// Mainland mobile prefixes the generator draws numbers from. 138, 139 and
// 188 are left out: the identity rules block 13800000000, 13800138000,
// 13900000000 and 18888888888 as numbers cashiers type for shoppers who
// give none.
var phonePrefixes = []string{
	"130", "131", "132", "133", "135", "136", "137", "150", "151", "152", "153", "155", "156", "157", "158",
	"159", "180", "181", "182", "183", "185", "186", "187", "189", "177", "199",
}

var shareTargets = []string{"wechat_friend", "wechat_moments", "weibo", "xiaohongshu", "douyin"}

var shareContents = []string{"campaign:weekend-double", "campaign:coffee-bonus", "campaign:big-basket", "coupon:C10", "coupon:P10", "article:spring-recipes", "article:coffee-guide"}
